"""``signup mailsink`` as a real process: one masked summary line per message, each stored as .eml."""

from __future__ import annotations

import json
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib

from tests.support import free_port, port_open, start_signup, wait_until


async def test_mailsink_stores_and_summarises_without_the_address(tmp_path: Path) -> None:
    port = free_port()
    out_dir = tmp_path / "mail"
    sink = start_signup(
        "mailsink",
        "--port",
        str(port),
        "--out-dir",
        str(out_dir),
        env={"LOG_FORMAT": "json"},
        log_dir=tmp_path,
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
        code = sink.stop(timeout=10)
    output = sink.output()
    assert code == 0
    assert b"hello" in stored[0].read_bytes()
    (line,) = [json.loads(x) for x in output.splitlines() if '"mail received"' in x]
    assert (line["to"], line["subject"], line["message_id"]) == (
        "a***@example.com",
        "Hi",
        "<m-1@signup-outbox>",
    )
    assert "alice@example.com" not in output
