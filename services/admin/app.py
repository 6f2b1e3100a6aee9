"""The console's factory: ``create_console(settings)``, a Litestar app of its own for the admin port.

Off (None) unless ``CONSOLE_OPERATORS`` names an operator: there is no default credential. It never shares
the public app's routes or port; its database pool and broker connection are its own and small.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.response import Redirect

from services.admin import dead_letter_views, overview_view, signup_views
from services.admin.access import Console, NotLoggedIn, Refused, login, login_page, logout
from services.admin.auth import Guard
from services.admin.render import html
from shared.broker import StreamsBroker
from shared.database import create_engine
from shared.logging import get_logger
from shared.settings import Settings, console_operators

log = get_logger()

MAX_BODY_BYTES = 8192
"""The console's forms are a token, a confirmation, a name and a password."""


def create_console(settings: Settings) -> Litestar | None:
    """The console for ``settings``, or None when no operator is configured. Connects lazily."""
    operators = console_operators(settings)
    if not operators:
        return None
    engine = create_engine(settings.database_url, pool_size=2)
    broker = StreamsBroker(url=settings.redis_url, middleware=[], socket_timeout=5.0)
    console = Console(
        guard=Guard(operators), engine=engine, broker=broker, secure_cookies=settings.console_cookie_secure
    )

    async def close() -> None:
        broker.close()
        await engine.dispose()

    return Litestar(
        route_handlers=[
            login_page,
            login,
            logout,
            overview_view.overview,
            signup_views.signup_page,
            signup_views.signups_page,
            signup_views.unhandled_page,
            dead_letter_views.dead_letters_page,
            dead_letter_views.replay_all_confirm,
            dead_letter_views.replay_all,
            dead_letter_views.dead_letter_page,
            dead_letter_views.replay_one,
            dead_letter_views.discard_confirm,
            dead_letter_views.discard_one,
        ],
        state=State({"console": console}),
        exception_handlers={
            NotLoggedIn: _to_login,
            Refused: _refused,
            dead_letter_views.Gone: dead_letter_views.gone,
            HTTPException: _http_error,
        },
        on_shutdown=[close],
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=None,
        logging_config=None,
    )


def _to_login(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return Redirect("/login", status_code=303)


def _refused(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.warning("console action refused", path=request.url.path)
    message = "Refused: log in again and use the console's own forms."
    return html("message.html", status=403, title="Refused", message=message)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    return html("message.html", status=exc.status_code, title="Not available", message=str(exc.detail))
