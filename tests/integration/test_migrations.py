"""`signup migrate`: creates the database, is idempotent, safe from concurrent processes, reversible."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg

from lab.harness.database import drop_database, with_database
from shared.keys import code_digest
from tests.support import PG_ADMIN_URL, Process, start_signup


def run_migrate(url: str, *extra: str, log_dir: Path) -> Process:
    """``signup migrate EXTRA`` on ``url``, started."""
    return start_signup("migrate", *extra, env={"DATABASE_URL": url}, log_dir=log_dir)


async def ended(process: Process, *, timeout: float = 120) -> int:
    """``process``'s exit code once it has ended by itself."""
    return await asyncio.to_thread(process.wait, timeout)


async def tables(url: str) -> set[str]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row["tablename"] for row in rows}
    finally:
        await connection.close()


async def test_concurrent_migrations_then_downgrade_and_upgrade_again(
    database_url: str, tmp_path: Path
) -> None:
    name = f"signup_migrate_{uuid.uuid4().hex[:8]}"
    url = with_database(PG_ADMIN_URL, name)
    try:
        # Four migrators race on a database that does not exist yet.
        processes = [run_migrate(url, log_dir=tmp_path) for _ in range(4)]
        codes = await asyncio.gather(*(ended(p) for p in processes))
        assert codes == [0] * 4, [p.output()[-2000:] for p in processes]
        assert {"users", "outbox", "verify_emails", "alembic_version"} <= await tables(url)

        assert await ended(run_migrate(url, log_dir=tmp_path)) == 0

        assert await ended(run_migrate(url, "--downgrade", "--revision", "base", log_dir=tmp_path)) == 0
        assert await tables(url) == {"alembic_version"}

        assert await ended(run_migrate(url, log_dir=tmp_path)) == 0
        assert {"users", "outbox", "verify_emails"} <= await tables(url)
    finally:
        await drop_database(PG_ADMIN_URL, name)


async def test_the_database_is_created_in_utf8_whatever_the_servers_default(database_url: str) -> None:
    """On a cluster initialised without a locale (SQL_ASCII), varchar(100) would count bytes, not letters."""
    connection = await asyncpg.connect(database_url)
    try:
        encoding = await connection.fetchval(
            "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()"
        )
        name = "अनिल" * 25  # 100 letters, 300 bytes in UTF-8
        stored = await connection.fetchval("SELECT CAST($1 AS varchar(100))", name)
    finally:
        await connection.close()
    assert encoding == "UTF8" and stored == name


async def test_codes_stored_before_0007_become_their_digests_and_their_links_keep_working(
    database_url: str, tmp_path: Path
) -> None:
    name = f"signup_migrate_{uuid.uuid4().hex[:8]}"
    url = with_database(PG_ADMIN_URL, name)
    code = "c" * 43
    try:
        assert await ended(run_migrate(url, "--revision", "0006_security", log_dir=tmp_path)) == 0
        connection = await asyncpg.connect(url)
        try:
            await connection.execute(
                "INSERT INTO users (username, hashed_password, full_name, email)"
                " VALUES ('alice', 'x', 'A', 'a@x.io')"
            )
            await connection.execute(
                "INSERT INTO verify_emails (username, email, secret_code, event_id, expired_at)"
                " VALUES ('alice', 'a@x.io', $1, $2, now())",
                code,
                uuid.uuid4(),
            )
            assert await ended(run_migrate(url, log_dir=tmp_path)) == 0
            stored = await connection.fetchval("SELECT code_sha256 FROM verify_emails")
        finally:
            await connection.close()
        assert stored == code_digest(code)
    finally:
        await drop_database(PG_ADMIN_URL, name)
