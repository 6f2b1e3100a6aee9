"""The API's one factory: ``create_app(settings)`` builds everything; nothing connects at import time."""

from __future__ import annotations

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.plugins.prometheus import PrometheusConfig
from redis.asyncio import Redis

from services.api import routes
from services.api.dispatch import build_dispatcher
from services.api.error_handlers import EXCEPTION_HANDLERS
from services.api.faults import Faults
from services.api.tracing import tracing_middleware
from shared.database import create_engine, create_sessionmaker
from shared.settings import Settings


def create_app(settings: Settings) -> Litestar:
    """Build the Litestar application for ``settings``. Connections open lazily and close on shutdown."""
    engine = create_engine(settings.database_url)
    dispatcher = build_dispatcher(settings)
    redis = Redis.from_url(settings.redis_url) if dispatcher.needs_redis else None
    state = State(
        {
            "settings": settings,
            "engine": engine,
            "sessions": create_sessionmaker(engine),
            "dispatcher": dispatcher,
            "redis": redis,
            "faults": Faults(
                commit_delay_ms=settings.fault_commit_delay_ms, rollback_ratio=settings.fault_rollback_ratio
            ),
        }
    )

    async def close() -> None:
        await dispatcher.close()
        if redis is not None:
            await redis.aclose()
        await engine.dispose()

    return Litestar(
        route_handlers=[
            routes.create_user,
            routes.resend_verify_email_route,
            routes.verify_email_route,
            routes.healthz,
            routes.readyz,
            routes.metrics,
        ],
        state=state,
        middleware=[tracing_middleware, PrometheusConfig(app_name="signup_api", group_path=True).middleware],
        exception_handlers=EXCEPTION_HANDLERS,
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
