from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from signup_cli.main import build_parser, targets
from tests.support import repo_root

# How the README, docs/ and the justfile show a command: `signup X`, uv run signup X, $ signup X.
SHOWN = re.compile(r"(?:`|uv run |\$ )signup ([a-z]+)")


def test_every_command_the_docs_and_the_justfile_show_is_declared() -> None:
    root = repo_root()
    texts = [root / "README.md", root / "justfile", *(root / "docs").glob("*.md")]
    shown = {name for path in texts for name in SHOWN.findall(path.read_text())}
    assert {"lab", "bench", "soak"} <= shown, "the pattern no longer finds the commands"
    declared = set(targets())
    assert shown <= declared, f"shown but not declared: {shown - declared}"


def fresh_python(*lines: str) -> subprocess.CompletedProcess[str]:
    """``lines`` run by a fresh interpreter: imports work on their own, not thanks to earlier tests."""
    code = "\n".join(lines)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_every_declared_command_resolves_to_its_function() -> None:
    done = fresh_python(
        "from signup_cli.main import resolve, targets",
        "for name, target in targets().items():",
        "    assert target and callable(resolve(target)), name",
        "    print(name)",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(done.stdout.split()) == sorted(targets())
    assert {"lab", "bench", "soak"} <= set(done.stdout.split())  # found through their entry points


@pytest.mark.parametrize(
    ("hidden", "argv"),
    [
        ("aiosmtpd", ["mailsink"]),  # the mailsink's server, a development dependency
        ("lab", ["bench", "--only", "slow"]),  # registered in pyproject.toml's entry points, lab/ absent
    ],
)
def test_a_development_command_without_its_tools_says_so_in_one_line(hidden: str, argv: list[str]) -> None:
    # As in the runtime image, which has neither aiosmtpd nor lab/.
    done = fresh_python(
        "import sys",
        f"sys.modules[{hidden!r}] = None",
        "from signup_cli.main import main",
        f"sys.exit(main({argv!r}))",
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"signup {argv[0]}: needs {hidden}, which is not installed here (lab, bench, soak, mailsink and dev "
        f"run from a checkout: uv run signup {argv[0]})"
    ]


def test_dlq_replay_needs_an_id_or_all() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dlq", "replay"])
    assert build_parser().parse_args(["dlq", "replay", "--all"]).all


def signup(*args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    """``signup *args`` with nothing in its environment but ``PATH`` and ``environ``."""
    env = {"PATH": os.environ["PATH"], **environ}
    return subprocess.run(["signup", *args], env=env, capture_output=True, text=True, timeout=60)


def test_a_bad_setting_stops_the_cli_with_one_line() -> None:
    result = signup("migrate", DATABASE_URL="mysql://localhost/signup")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "DATABASE_URL" in result.stderr


def test_a_bad_setting_of_another_process_stops_only_that_one() -> None:
    # An unreachable database makes the command stop soon after its settings were read.
    unreachable = {"DATABASE_URL": "postgresql://postgres@127.0.0.1:9/signup", "WORKER_THREADS": "eight"}
    worker = signup("worker", **unreachable)
    assert worker.returncode == 2
    assert worker.stderr.strip() == (
        "signup: invalid configuration: WORKER_THREADS='eight' is invalid: Expected `int`, got `str`"
    )
    migrate = signup("migrate", **unreachable)
    assert "invalid configuration" not in migrate.stderr
    assert migrate.stderr.splitlines()[0] == (
        "signup: ignored: WORKER_THREADS='eight' is invalid: Expected `int`, got `str`; "
        "signup migrate does not read it"
    )
