"""What a log line may carry: records from the standard library's loggers are redacted like structlog's."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from shared.logging import configure_logging


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """This process's logging, configured as a service's, into a buffer; the test session's afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    out = io.StringIO()
    configure_logging(service="worker", log_format="json", log_level="info", stream=out)
    try:
        yield out
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.configure(**config)


def test_extra_fields_of_a_standard_library_record_are_redacted(lines: io.StringIO) -> None:
    logging.getLogger("some.library").warning(
        "connecting",
        extra={"password": "pässwörd", "email": "zoë@bücher.de", "color_message": "\x1b[36mhi\x1b[0m"},
    )
    record = json.loads(lines.getvalue().splitlines()[-1])
    assert record["event"] == "connecting"
    assert record["password"] == "***"
    assert record["email"] == "z***@bücher.de"
    assert "color_message" not in record  # uvicorn's copy with terminal colour codes
    assert record["service"] == "worker"
