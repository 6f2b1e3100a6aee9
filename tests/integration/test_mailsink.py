"""``signup mailsink`` as a real process: one masked summary line per message, each stored as .eml."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib

from tests.support import free_port, port_open, repo_root, wait_until


async def test_mailsink_stores_and_summarises_without_the_address(tmp_path: Path) -> None:
    port = free_port()
    out_dir = tmp_path / "mail"
    sink = subprocess.Popen(
        [sys.executable, "-m", "signup_cli.main", "mailsink", "--port", str(port), "--out-dir", str(out_dir)],
        env={**os.environ, "LOG_FORMAT": "json"},
        cwd=repo_root(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: port_open(port), timeout=20, what="the mailsink")
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "a@signup.local", "alice@example.com", "Hi"
        message["Message-ID"] = "<m-1@signup-outbox>"
        message.set_content("hello")
        await aiosmtplib.send(message, hostname="127.0.0.1", port=port, timeout=10)
        stored = wait_until(lambda: list(out_dir.glob("*.eml")), timeout=10, what="the .eml file")
    finally:
        sink.send_signal(signal.SIGTERM)
        output, _ = sink.communicate(timeout=10)
    assert sink.returncode == 0
    assert b"hello" in stored[0].read_bytes()
    (line,) = [json.loads(x) for x in output.splitlines() if '"mail received"' in x]
    assert (line["to"], line["subject"], line["message_id"]) == (
        "a***@example.com",
        "Hi",
        "<m-1@signup-outbox>",
    )
    assert "alice@example.com" not in output
