from __future__ import annotations

import subprocess

import pytest

from signup_cli.main import COMMANDS, build_parser


def test_every_design_command_is_declared() -> None:
    assert set(COMMANDS) == {
        "migrate",
        "api",
        "relay",
        "worker",
        "mailsink",
        "dev",
        "lab",
        "bench",
        "dlq",
        "trace",
    }


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
