"""Small subcommands that need no module of their own."""

from __future__ import annotations

import argparse
import asyncio

from shared.logging import configure_logging
from shared.migrate import downgrade
from shared.migrate import migrate as migrate_database
from shared.settings import Settings


def migrate(settings: Settings, args: argparse.Namespace) -> int:
    """``signup migrate [--revision R] [--downgrade]``."""
    configure_logging(service="migrate", log_format=settings.log_format, log_level=settings.log_level)
    if args.downgrade:
        asyncio.run(downgrade(settings.database_url, revision=args.revision))
    else:
        asyncio.run(migrate_database(settings.database_url, revision=args.revision))
    return 0
