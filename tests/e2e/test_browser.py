"""A person's browser on real links: headless Chromium opens the links of real emails sent by the real
api, relay and worker processes, and each page state is checked in the DOM Chromium built and screenshotted.
On the expired page a person types their address and clicks the button (tests/e2e/cdp.py drives Chromium
over the DevTools protocol): the form's post must reach the API and a new email with a working link arrive.

Skips (visibly) where Debian's ``chromium`` is not installed (``apt-get install -y chromium``). With
``UPDATE_SCREENSHOTS=1`` the screenshots replace those in ``docs/screenshots/``.
"""

from __future__ import annotations

import asyncio
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

from services.api.pages import SECURITY_HEADERS
from shared.database import users, verify_emails
from shared.settings import Settings
from tests.e2e.cdp import HEADLESS, Browser, marker_env, stop_marked
from tests.support import Delivery, Services, SmtpSink, link_of, ready, repo_root, wait_for

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed: apt-get install -y chromium"
)


def chromium(*args: str) -> str:
    """Run headless Chromium once, in a fresh profile, and return what it printed."""
    with tempfile.TemporaryDirectory(prefix="signup-chromium-") as profile:
        marker, env = marker_env(profile)
        try:
            done = subprocess.run(
                [str(CHROMIUM), *HEADLESS, f"--user-data-dir={profile}", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
        finally:
            stop_marked(marker)  # no helper left writing into the profile as it is removed
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
        assert "This link has expired" in await asyncio.to_thread(press, old, "expired", shots)

    # The person asks for a new email on the expired page, in the browser.
    sent, answer, page = await asyncio.to_thread(ask_again_in_browser, old, "jose@example.com", shots)
    assert sent["method"] == "POST" and sent["url"] == f"{stack.api_url}/v1/resend_verify_email"
    assert header(sent, "Content-Type") == "application/x-www-form-urlencoded"
    assert sent["postData"] == "email=jose%40example.com"
    assert answer["status"] == 202 and answer["mimeType"] == "text/html"
    assert header(answer, "Content-Security-Policy") == SECURITY_HEADERS["Content-Security-Policy"]
    assert "Check your inbox" in page
    (_, second) = await wait_for(
        lambda: _at_least(emails, 2), timeout=30, what="the email the form asked for"
    )
    assert second.recipients == ("jose@example.com",) and second.message_id != first.message_id
    new, _ = link_of(second.message)
    assert new != old
    code = new.split("secret_code=")[1]
    sensitive.append(code)
    # Opening the link (a person, a mail scanner, a link preview) shows one button and verifies nothing.
    confirm = look(new, "confirm", shots)
    assert "Confirm your email address" in confirm and confirm.count("<button") == 1
    async with db.connect() as connection:
        assert not (await connection.execute(sa.select(users.c.is_email_verified))).scalar_one()
    assert "A newer email was sent" in await asyncio.to_thread(press, old, "superseded", shots)
    verified = await asyncio.to_thread(press, new, "verified", shots)
    assert "Email verified" in verified and code not in verified
    assert "Already verified" in await asyncio.to_thread(press, new, "already_verified", shots)
    wrong = new.replace(code, "x" * 43)
    assert "This link does not work" in await asyncio.to_thread(press, wrong, "invalid", shots)


def press(link: str, name: str, shots: Path) -> str:
    """Open ``link`` in Chromium and press the page's one button, as a person does; the page that follows
    (screenshotted as ``shots/name.png``). Fails on any error Chromium logs but the network's."""
    assert CHROMIUM is not None
    with Browser(CHROMIUM) as browser:
        browser.open(link)
        assert "Confirm your email address" in browser.html()
        before = len(browser.events)
        browser.click("button[type=submit]")
        browser.wait_event("Page.loadEventFired", since=before)
        entries = [e["params"]["entry"] for e in browser.events if e["method"] == "Log.entryAdded"]
        errors = [e for e in entries if e["level"] == "error" and e["source"] != "network"]
        assert not errors, errors
        browser.screenshot(shots / f"{name}.png")
        return browser.html()


def ask_again_in_browser(expired: str, email: str, shots: Path) -> tuple[Any, Any, str]:
    """Open the ``expired`` link, type ``email`` into the page's form and click its button, as a person does.

    Returns the request the form sent, the response, and the page the browser then shows (screenshotted
    as ``resend_accepted``). Fails if the page or the form broke a rule of its Content-Security-Policy
    (Chromium logs each violation as a "security" error: an inline style without its hash, a form posting
    where ``form-action`` does not allow).
    """
    assert CHROMIUM is not None
    with Browser(CHROMIUM) as browser:
        browser.open(expired)
        pressed = len(browser.events)
        browser.click("button[type=submit]")  # the confirmation page's one button
        browser.wait_event("Page.loadEventFired", since=pressed)
        assert "This link has expired" in browser.html()
        browser.type_into("input[name=email]", email)
        before = len(browser.events)
        browser.click("button[type=submit]")
        # The next page, or the CSP blocking the form (then the assertion below names the violation).
        browser.wait_event(
            ("Page.loadEventFired", "Log.entryAdded"),
            since=before,
            where=lambda e: "entry" not in e["params"] or e["params"]["entry"]["source"] == "security",
        )
        # A CSP violation is a "security" error; the expired link's own 410 is a "network" one, as expected.
        entries = [e["params"]["entry"] for e in browser.events if e["method"] == "Log.entryAdded"]
        errors = [e for e in entries if e["level"] == "error" and e["source"] != "network"]
        assert not errors, errors
        posted = browser.wait_event(
            "Network.requestWillBeSent",
            since=before,
            where=lambda e: e["params"]["request"]["method"] == "POST",
        )
        answered = browser.wait_event(
            "Network.responseReceived",
            where=lambda e: e["params"]["requestId"] == posted["params"]["requestId"],
        )
        browser.screenshot(shots / "resend_accepted.png")
        return posted["params"]["request"], answered["params"]["response"], browser.html()


def header(message: Any, name: str) -> str | None:
    """Header ``name`` of a DevTools request or response, whatever its case."""
    return next((v for k, v in message["headers"].items() if k.lower() == name.lower()), None)


async def _at_least(probe: Any, count: int) -> list[Delivery]:
    found = await probe()
    return found if len(found) >= count else []
