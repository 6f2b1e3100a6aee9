from __future__ import annotations

import re
import subprocess
import sys

import pytest

from signup_cli.main import COMMANDS, build_parser
from tests.support import repo_root

# How the README, docs/ and the justfile show a command: `signup X`, uv run signup X, $ signup X.
SHOWN = re.compile(r"(?:`|uv run |\$ )signup ([a-z]+)")


def test_every_command_the_docs_and_the_justfile_show_is_declared() -> None:
    root = repo_root()
    texts = [root / "README.md", root / "justfile", *(root / "docs").glob("*.md")]
    shown = {name for path in texts for name in SHOWN.findall(path.read_text())}
    assert {"lab", "bench", "soak"} <= shown, "the pattern no longer finds the commands"
    assert shown <= set(COMMANDS), f"shown but not declared: {shown - set(COMMANDS)}"


def fresh_python(*lines: str) -> subprocess.CompletedProcess[str]:
    """``lines`` run by a fresh interpreter: imports work on their own, not thanks to earlier tests."""
    code = "\n".join(lines)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_every_declared_command_resolves_to_its_function() -> None:
    done = fresh_python(
        "from signup_cli.main import COMMANDS, resolve",
        "for name, (target, _) in COMMANDS.items():",
        "    assert callable(resolve(target)), name",
        "    print(name)",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == list(COMMANDS)


def test_a_development_command_without_its_tools_says_so_in_one_line() -> None:
    # As in the runtime image, which has neither aiosmtpd (the mailsink's server) nor lab/.
    done = fresh_python(
        "import sys",
        "sys.modules['aiosmtpd'] = None",
        "from signup_cli.main import main",
        "sys.exit(main(['mailsink']))",
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "signup mailsink: needs aiosmtpd, which is not installed here (lab, bench, soak, mailsink and dev "
        "run from a checkout: uv run signup mailsink)"
    ]


def test_dlq_replay_needs_an_id_or_all() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dlq", "replay"])
    assert build_parser().parse_args(["dlq", "replay", "--all"]).all


def test_a_bad_setting_stops_the_cli_with_one_line() -> None:
    result = subprocess.run(
        ["signup", "migrate"],
        env={"PATH": __import__("os").environ["PATH"], "API_PORT": "x"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "API_PORT" in result.stderr
