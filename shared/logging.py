"""structlog set-up shared by every process (DESIGN §9).

One JSON object per line on stdout (``LOG_FORMAT=console`` for people). Every line carries ``timestamp``,
``level``, ``service``, ``event`` and ``request_id``; request- or message-scoped keys (``request_id``,
``username``, ``event_id``, ``message_id``) are bound with ``structlog.contextvars`` by the edges. A line
written inside an OpenTelemetry span also carries its ``trace_id`` and ``span_id`` (hex, as tracing UIs show).
The standard library's loggers (uvicorn, dramatiq, alembic) are routed through the same processors.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, TextIO

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger

# Keys whose values must never reach a log line, whoever passes them.
_SECRET_KEYS = frozenset(
    {"password", "hashed_password", "secret_code", "smtp_password", "code", "token", "code_sha256"}
)


def mask_email(email: str) -> str:
    """``alice@example.com`` → ``a***@example.com``: enough to debug a domain, not enough to identify."""
    local, _, domain = email.rpartition("@")
    if not local:
        return "***"
    return f"{local[0]}***@{domain}"


def _redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    event_dict.pop("color_message", None)  # uvicorn's copy of the message with terminal colour codes
    for key in _SECRET_KEYS.intersection(event_dict):
        event_dict[key] = "***"
    if isinstance(email := event_dict.get("email"), str):
        event_dict["email"] = mask_email(email)
    return event_dict


# PostgreSQL puts row values in an error's DETAIL ("Failing row contains (alice, $argon2id$…, alice@x.org)",
# "Key (lower(email))=(alice@x.org) already exists") and SQLAlchemy appends a statement's parameters, so a
# logged database exception would carry hashes and addresses. Runs after exceptions are rendered to text.
_DATABASE_DETAIL = re.compile(r"^(DETAIL:|\[parameters:).*$", re.MULTILINE)


def _scrub_database_details(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key, value in event_dict.items():
        if isinstance(value, str) and ("DETAIL:" in value or "[parameters:" in value):
            event_dict[key] = _DATABASE_DETAIL.sub(r"\1 (redacted)", value)
    return event_dict


def _add_span(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event_dict["trace_id"] = format(span_context.trace_id, "032x")
        event_dict["span_id"] = format(span_context.span_id, "016x")
    return event_dict


def _defaults(service: str) -> Processor:
    def add(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", service)
        event_dict.setdefault("request_id", None)
        return event_dict

    return add


def configure_logging(
    *, service: str, log_format: str = "json", log_level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog and the standard library's root logger for one process.

    ``stream`` defaults to stdout; tests pass their own to read what was logged.
    """
    out = stream or sys.stdout
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _defaults(service),
        _add_span,
        _redact,
    ]
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if log_format == "console"
        else structlog.processors.JSONRenderer()
    )
    level = logging.getLevelNamesMapping()[log_level.upper()]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            _scrub_database_details,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # A standard-library record's ``extra`` fields first: redaction must see them too.
            foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _scrub_database_details,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Access logs would print query strings, and the verification link carries the secret code in one.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs full URLs at info, and a verification URL carries its secret code.
    for noisy in ("asyncio", "aiosmtpd", "mail.log", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def get_logger(**initial: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger with ``initial`` keys bound."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(**initial)
    return logger
