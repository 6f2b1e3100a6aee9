"""The operator console in a browser, on a running stack: headless Chromium logs in, reads the overview's real
numbers, finds a signup's timeline, replays its dead letter from the letter's page and the email arrives at
the SMTP server once. A form on another site posting to the console is refused, and no page of the console
breaks its Content-Security-Policy (Chromium reports each violation as a "security" log entry).

Skips (visibly) where Debian's ``chromium`` is not installed. With ``UPDATE_SCREENSHOTS=1`` the screenshots
replace those in ``docs/screenshots/`` (``console_*.png``).
"""

from __future__ import annotations

import asyncio
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from services.admin.render import CSP
from shared.broker import create_broker
from shared.database import outbox
from shared.settings import Settings
from tests.e2e.cdp import Browser
from tests.support import Delivery, Services, SmtpSink, free_port, ready, repo_root, wait_for

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed: apt-get install -y chromium"
)
PASSWORD = "a long operator password"


@pytest.fixture
def stack(settings: Settings, sink: SmtpSink, db: Any, tmp_path: Path) -> Iterator[Services]:
    services = Services(settings, sink, tmp_path)
    services.console_url = f"http://127.0.0.1:{free_port()}"  # type: ignore[attr-defined]
    try:
        services.start(
            "api",
            CONSOLE_OPERATORS=f"alice:{PASSWORD}",
            CONSOLE_HOST="127.0.0.1",
            CONSOLE_PORT=services.console_url.rsplit(":", 1)[1],  # type: ignore[attr-defined]
        )
        services.start("relay")
        services.start("worker")
        yield services
    finally:
        services.stop()


class CrossSitePage:
    """A page on another site (``localhost``, where the console is ``127.0.0.1``) with a form that posts to
    the console: what a CSRF attack looks like without script."""

    def __init__(self, target: str) -> None:
        body = (
            f'<!doctype html><form method="post" action="{target}"><input type="hidden" name="csrf" '
            'value="forged"><input type="hidden" name="confirm" value="yes">'
            '<button type="submit">Win a prize</button></form>'
        ).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://localhost:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> CrossSitePage:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_an_operator_finds_a_signup_and_replays_its_dead_letter_once(
    stack, settings, sink, db, tmp_path, sensitive
) -> None:
    shots = repo_root() / "docs" / "screenshots" if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path
    console: str = stack.console_url
    await ready(stack, settings)
    sensitive.append(PASSWORD)

    async with httpx.AsyncClient(timeout=10) as client:
        # Without a session, nothing but the login page.
        assert (await client.get(f"{console}/")).headers["location"] == "/login"
        # The SMTP server refuses the first email for good: a dead letter.
        sink.script.append("550 5.1.1 mailbox unavailable")
        body = {"username": "dora", "full_name": "Dora", "email": "dora@example.com", "password": "pw-123456"}
        response = await client.post(
            f"{stack.api_url}/v1/create_user", json=body, headers={"X-Request-ID": "r-1"}
        )
        assert response.status_code == 200, response.text
        # The console is not on the public port.
        assert (await client.get(f"{stack.api_url}/dead-letters")).status_code == 404

    broker = create_broker(settings)
    try:
        letters = await wait_for(lambda: _async(broker.dead_letters()), timeout=30, what="the dead letter")
    finally:
        broker.close()
    (letter,) = letters
    event_id = letter.message.message_id

    assert CHROMIUM is not None
    seen = await asyncio.to_thread(operate, CHROMIUM, console, letter.entry_id, shots)
    assert 'id="total-signups">1<' in seen["overview"] and 'id="total-dead-letters">1<' in seen["overview"]
    assert ">alive<" in seen["overview"] and "relay" in seen["overview"] and "worker" in seen["overview"]
    assert "outbox send_verify_email created" in seen["signup"] and "request_id=r-1" in seen["signup"]
    assert "550" in seen["letter"] and "Replayed" in seen["replayed"]
    assert seen["cross_site_status"] == 403
    assert seen["csp_headers"] and set(seen["csp_headers"]) == {CSP}
    assert seen["violations"] == [], seen["violations"]

    async def received() -> list[Delivery]:
        return list(sink.received)

    (mail,) = await wait_for(received, timeout=30, what="the replayed email")
    assert mail.recipients == ("dora@example.com",)
    assert mail.message_id == f"<{event_id}@signup-outbox>"

    async def handled() -> bool:
        async with db.connect() as connection:
            query = sa.select(outbox.c.handled_at).where(outbox.c.event_id == event_id)
            return (await connection.execute(query)).scalar_one() is not None

    await wait_for(handled, timeout=30, what="the replay handled")
    assert len(sink.received) == 1  # once
    after = await asyncio.to_thread(look_again, CHROMIUM, console, shots)
    assert "dead letter replayed by alice" in after and "verify email sent" in after


def operate(chromium: str, console: str, entry_id: str, shots: Path) -> dict[str, Any]:
    """Log in, look at the overview, the signup and its dead letter, try a cross-site post, replay."""
    seen: dict[str, Any] = {}
    with Browser(chromium, width=960, height=700) as browser:
        log_in(browser, console)
        seen["overview"] = browser.html()
        browser.screenshot(shots / "console_overview.png")
        browser.open(f"{console}/signup?q=dora%40example.com")
        seen["signup"] = browser.html()

        with CrossSitePage(f"{console}/dead-letters/{entry_id}/replay") as evil:
            browser.open(evil.url)
            before = len(browser.events)
            browser.click("button[type=submit]")
            answer = browser.wait_event(
                "Network.responseReceived",
                since=before,
                where=lambda e: e["params"]["response"]["url"].startswith(console),
            )
            seen["cross_site_status"] = answer["params"]["response"]["status"]
            browser.wait_event("Page.loadEventFired", since=before)

        browser.open(f"{console}/dead-letters/{entry_id}")
        seen["letter"] = browser.html()
        browser.screenshot(shots / "console_dead_letter.png")
        before = len(browser.events)
        browser.click("form[action$='/replay'] button")
        browser.wait_event("Page.loadEventFired", since=before)
        seen["replayed"] = browser.html()
        seen["csp_headers"] = csp_headers(browser, console)
        seen["violations"] = violations(browser)
    return seen


def look_again(chromium: str, console: str, shots: Path) -> str:
    with Browser(chromium, width=960, height=700) as browser:
        log_in(browser, console)
        browser.open(f"{console}/signup?q=dora")
        browser.screenshot(shots / "console_signup.png")
        page = browser.html()
        assert violations(browser) == []
        return page


def log_in(browser: Browser, console: str) -> None:
    browser.open(f"{console}/login")
    browser.type_into("input[name=name]", "alice")
    browser.type_into("input[name=password]", PASSWORD)
    before = len(browser.events)
    browser.click("button[type=submit]")
    browser.wait_event("Page.loadEventFired", since=before)
    assert "Overview" in browser.html()


def csp_headers(browser: Browser, console: str) -> list[str]:
    """The Content-Security-Policy of every page of the console the browser loaded."""
    found = []
    for event in browser.events:
        if event["method"] != "Network.responseReceived" or event["params"]["type"] != "Document":
            continue
        response = event["params"]["response"]
        if response["url"].startswith(console):
            headers = {k.lower(): v for k, v in response["headers"].items()}
            found.append(headers.get("content-security-policy", ""))
    return found


def violations(browser: Browser) -> list[Any]:
    entries = [e["params"]["entry"] for e in browser.events if e["method"] == "Log.entryAdded"]
    return [e for e in entries if e["source"] == "security" or "Content Security Policy" in e.get("text", "")]


async def _async(value: Any) -> Any:
    return value
