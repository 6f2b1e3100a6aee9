"""The HTML part of every email as a mail client's browser engine renders it: headless Chromium opens it from
a file, and must make no request but for that file (no remote image, font or style: a tracking pixel or a
blocked image would show as much). Screenshots at a phone's width and a desktop's, for each language.

Skips (visibly) where Debian's ``chromium`` is not installed (``apt-get install -y chromium``). With
``UPDATE_SCREENSHOTS=1`` the screenshots replace ``docs/screenshots/email_<language>_<width>.png``.
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

from shared.settings import load_settings
from tests.e2e.cdp import Browser
from tests.support import KINDS, LANGUAGES, NAMES, parts, render, repo_root

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed: apt-get install -y chromium"
)
WIDTHS = {"phone": 375, "desktop": 900}


# The screenshots show a product as a deployment would name it.
SHOWN = load_settings({}, product_name="Acme Notes", public_base_url="https://notes.example.org")


def html_file(kind: str, language: str, directory: Path, *, full_name: str = "Zoë Ångström") -> Path:
    path = directory / f"{kind}_{language}.html"
    html = parts(render(kind, language, full_name=full_name, settings=SHOWN))[1]
    path.write_text(html.replace("https://signup.example.org", SHOWN.public_base_url), encoding="utf-8")
    return path


def test_the_html_part_loads_nothing_but_itself(tmp_path: Path) -> None:
    assert CHROMIUM is not None
    with Browser(CHROMIUM) as page:
        for kind in KINDS:
            for language in LANGUAGES:
                path = html_file(kind, language, tmp_path, full_name=NAMES["markup"])
                since = len(page.events)
                page.open(path.as_uri())
                requested = [
                    event["params"]["request"]["url"]
                    for event in page.events[since:]
                    if event["method"] == "Network.requestWillBeSent"
                ]
                assert requested == [path.as_uri()], (kind, language)
                dom = page.html()
                assert "<script" not in dom.lower() and "<style" not in dom.lower()
                if kind == "verify_email":
                    assert "&lt;script&gt;" in dom  # the name shown as text


@pytest.mark.parametrize("language", LANGUAGES)
def test_screenshots_at_a_phone_and_a_desktop_width(language: str, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    shots = repo_root() / "docs" / "screenshots" if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path
    path = html_file(
        "verify_email", language, tmp_path, full_name=NAMES["rtl"] if language == "ar" else "Zoë Ångström"
    )
    for name, width in WIDTHS.items():
        with Browser(CHROMIUM, width=width, height=600) as page:
            page.open(path.as_uri())
            # The whole email, as tall as it is: the window grown to the page's height.
            height = page.command("Page.getLayoutMetrics")["cssContentSize"]["height"]
            page.command(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=int(height),
                deviceScaleFactor=1,
                mobile=name == "phone",
            )
            # A phone's width must not need scrolling sideways: the email fits, however long the link.
            scroll_width = page.command("Page.getLayoutMetrics")["cssContentSize"]["width"]
            assert scroll_width <= width, (language, name, scroll_width)
            png = base64.b64decode(page.command("Page.captureScreenshot", format="png")["data"])
            (shots / f"email_{language}_{name}.png").write_bytes(png)
