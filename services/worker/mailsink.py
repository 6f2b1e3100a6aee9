"""``signup mailsink``: a development SMTP server that logs one line per message and stores it as .eml."""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import time
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

from shared.logging import configure_logging, get_logger, mask_email
from shared.settings import Settings

log = get_logger()


class StoringHandler:
    """aiosmtpd handler: accept everything, write it to ``out_dir``, log a summary without the address."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content: bytes = (
            envelope.content if isinstance(envelope.content, bytes) else envelope.content.encode()
        )
        message = message_from_bytes(content, policy=policy.default)
        self.count += 1
        message_id = str(message.get("Message-ID", ""))
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", message_id.strip("<>"))[:100] or "message"
        path = self.out_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{self.count:05d}-{stem}.eml"
        path.write_bytes(content)
        log.info(
            "mail received",
            to=", ".join(mask_email(address) for address in envelope.rcpt_tos),
            subject=str(message.get("Subject", "")),
            message_id=message_id,
            file=str(path),
        )
        return "250 OK"


async def serve(*, host: str, port: int, out_dir: Path) -> None:
    """Serve until SIGINT or SIGTERM."""
    handler = StoringHandler(out_dir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, hostname="signup-mailsink"), host, port)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("mailsink listening", host=host, port=port, out_dir=str(out_dir))
    async with server:
        await stop.wait()


def run(settings: Settings, args: argparse.Namespace) -> int:
    configure_logging(service="mailsink", log_format=settings.log_format, log_level=settings.log_level)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(host=args.host, port=args.port or settings.smtp_port, out_dir=Path(args.out_dir)))
    return 0
