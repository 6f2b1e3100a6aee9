"""A person's browser on real links: headless Chromium opens the links of real emails sent by the real
api, relay and worker processes, and each page state is checked in the DOM Chromium built and screenshotted.

Skips (visibly) where Debian's ``chromium`` is not installed (``apt-get install -y chromium``). With
``UPDATE_SCREENSHOTS=1`` the screenshots replace those in ``docs/screenshots/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from shared.database import verify_emails
from shared.settings import Settings
from tests.e2e.test_e2e_signup import Services, link_of, ready
from tests.support import Delivery, SmtpSink, repo_root, wait_for

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed: apt-get install -y chromium"
)


def chromium(*args: str) -> str:
    """Run headless Chromium once, in a fresh profile, and return what it printed."""
    with tempfile.TemporaryDirectory(prefix="signup-chromium-") as profile:
        done = subprocess.run(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",  # the tests run as root in CI's container
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    return done.stdout


def look(url: str, name: str, shots: Path) -> str:
    """The DOM of ``url`` as Chromium renders it, and a screenshot in ``shots/name.png``: one page load, as
    opening a link has effects (the first verifies, the next one finds it verified already)."""
    dom = chromium("--window-size=720,520", f"--screenshot={shots / f'{name}.png'}", "--dump-dom", url)
    assert (shots / f"{name}.png").stat().st_size > 0
    return dom


@pytest.fixture
def stack(settings: Settings, sink: SmtpSink, db: Any, tmp_path: Path) -> Iterator[Services]:
    services = Services(settings, sink, tmp_path)
    try:
        services.start("api", RESEND_MIN_INTERVAL_S="0")
        services.start("relay")
        services.start("worker")
        yield services
    finally:
        services.stop()


async def test_each_page_a_person_can_meet(stack, settings, sink, db, tmp_path, sensitive) -> None:
    shots = repo_root() / "docs" / "screenshots" if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path
    shots.mkdir(exist_ok=True)
    await ready(stack, settings)

    async def emails() -> list[Delivery]:
        return list(sink.received)

    async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as client:
        body = {"username": "jose", "full_name": "José García-Núñez", "email": "jose@example.com"}
        response = await client.post("/v1/create_user", json={**body, "password": "correct horse"})
        assert response.status_code == 200, response.text
        (first,) = await wait_for(emails, timeout=30, what="the signup's email")
        old, _ = link_of(first.message)
        sensitive.append(old.split("secret_code=")[1])
        async with db.begin() as connection:  # 15 minutes later
            await connection.execute(verify_emails.update().values(expired_at=sa.func.now()))
        assert "This link has expired" in look(old, "expired", shots)

        response = await client.post("/v1/resend_verify_email", json={"email": "jose@example.com"})
        assert response.status_code == 202
        await wait_for(lambda: _at_least(emails, 2), timeout=30, what="the resent email")
    new, _ = link_of(sink.received[1].message)
    code = new.split("secret_code=")[1]
    sensitive.append(code)
    assert "A newer email was sent" in look(old, "superseded", shots)
    verified = look(new, "verified", shots)
    assert "Email verified" in verified and code not in verified
    assert "Already verified" in look(new, "already_verified", shots)
    assert "This link does not work" in look(new.replace(code, "x" * 43), "invalid", shots)


async def _at_least(probe: Any, count: int) -> list[Delivery]:
    found = await probe()
    return found if len(found) >= count else []
