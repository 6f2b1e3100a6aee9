"""The API's factory: ``create_app(settings)`` builds everything; nothing connects at import time."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from litestar import Litestar
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.plugins.opentelemetry import OpenTelemetryConfig
from litestar.plugins.prometheus import PrometheusConfig
from litestar.types import ExceptionHandlersMap
from redis.asyncio import Redis

from services.api import routes
from services.api.admission import SHED_LOG, build_admission
from services.api.client_limits import ClientLimiter, ClientLimits
from services.api.dispatch import Dispatcher, OutboxDispatcher
from services.api.error_handlers import EXCEPTION_HANDLERS
from services.api.idempotency import KeyPurge
from services.api.resend import ResendQueue
from services.api.signup import BeforeCommit
from services.api.slow_clients import read_deadline
from services.api.tracing import UNTRACED_PATHS, redact_query_string, tracing_middleware
from shared.database import create_engine, create_sessionmaker
from shared.keys import server_key
from shared.settings import Settings, trusted_networks
from shared.telemetry import tracing_enabled

# How long a stopping API gives the resend requests it answered to run (within uvicorn's grace).
RESEND_DRAIN_S = 3.0
RESEND_POOL_SIZE = 4
"""Connections of the resends' pool (and as many again in overflow): each resend holds one for two short
statements, and those for one address wait for each other on its row lock anyway."""


def create_app(
    settings: Settings,
    *,
    dispatcher: Dispatcher | None = None,
    before_commit: BeforeCommit | None = None,
    exception_handlers: ExceptionHandlersMap | None = None,
) -> Litestar:
    """Build the Litestar application for ``settings``. Connections open lazily and close on shutdown.

    ``dispatcher`` (default ``OutboxDispatcher``) hands each signup's message on inside its transaction,
    ``before_commit`` is awaited right before each signup commits, and ``exception_handlers`` map more
    exceptions to answers: the seams the lab starts the API through.
    """
    engine = create_engine(settings.database_url)
    sessions = create_sessionmaker(engine)
    # Verification and /readyz have a pool of their own: a flood of signups or resends, which may hold every
    # connection of the shared pool, cannot make a person's click or the orchestrator's probe wait for one.
    reserved_engine = create_engine(settings.database_url, pool_size=settings.api_reserved_pool_size)
    # Resends run after their answer on a pool of their own, so that a flood of them cannot take the
    # signups' connections either. It skips the pre-ping's three round trips per checkout, a third of a
    # resend's: a resend that meets a connection PostgreSQL closed is run again by ResendQueue.
    resend_engine = create_engine(settings.database_url, pool_size=RESEND_POOL_SIZE, pre_ping=False)
    dispatcher = dispatcher or OutboxDispatcher()
    redis = Redis.from_url(settings.redis_url) if dispatcher.needs_redis else None
    ttl = timedelta(hours=settings.api_idempotency_ttl_hours)
    purge = KeyPurge(sessions, ttl=ttl)
    admission = build_admission(settings)
    resends = ResendQueue(create_sessionmaker(resend_engine), settings, limit=settings.api_resend_max_pending)
    # Read now, so that an unset secret's warning comes at start, not at the first retry.
    idempotency_secret = server_key(settings.api_idempotency_secret, setting="API_IDEMPOTENCY_SECRET")
    clients = ClientLimits(
        trusted=trusted_networks(settings.api_trusted_proxies),
        signups=ClientLimiter("create_user", settings.api_client_signups_per_hour),
        resends=ClientLimiter("resend_verify_email", settings.api_client_resends_per_hour),
    )
    state = State(
        {
            "settings": settings,
            "engine": engine,
            "sessions": sessions,
            "reserved_engine": reserved_engine,
            "reserved_sessions": create_sessionmaker(reserved_engine),
            "resend_engine": resend_engine,
            "dispatcher": dispatcher,
            "admission": admission,
            "redis": redis,
            "resends": resends,
            "idempotency_secret": idempotency_secret,
            "clients": clients,
            "before_commit": before_commit,
        }
    )

    async def close() -> None:
        SHED_LOG.flush()
        await purge.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(resends.drain(), timeout=RESEND_DRAIN_S)
        await dispatcher.close()
        if redis is not None:
            await redis.aclose()
        await engine.dispose()
        await reserved_engine.dispose()
        await resend_engine.dispose()

    return Litestar(
        route_handlers=[
            routes.create_user,
            routes.resend_verify_email_route,
            routes.verify_email_route,
            routes.verify_email_form_route,
            routes.healthz,
            routes.readyz,
        ],
        state=state,
        middleware=[
            # Outermost: the head is in (its deadline stops), the body gets its own (slow_clients.py).
            read_deadline(settings.api_body_timeout_ms / 1000),
            *_opentelemetry(),
            tracing_middleware,
            PrometheusConfig(app_name="signup_api", group_path=True).middleware,
        ],
        exception_handlers={**EXCEPTION_HANDLERS, **(exception_handlers or {})},
        on_startup=[purge.start],
        on_shutdown=[close],
        request_max_body_size=settings.api_max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="signup-outbox",
            version="0.1.0",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
        ),
        logging_config=None,
    )


def _opentelemetry() -> list[DefineMiddleware]:
    """Litestar's OpenTelemetry middleware, outermost, when this process traces; nothing otherwise."""
    if not tracing_enabled():
        return []
    # The ASGI receive/send spans only add noise. The query string (the link's code) never reaches a span.
    config = OpenTelemetryConfig(
        exclude=[f"^{path}$" for path in UNTRACED_PATHS],
        exclude_spans=["receive", "send"],
        server_request_hook_handler=redact_query_string,
    )
    return [config.middleware]
