"""How database failures map to answers: a server that cannot serve now is a 503, never a 500."""

from __future__ import annotations

import asyncpg.exceptions
import pytest
from litestar.testing import RequestFactory
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi
from sqlalchemy.exc import DBAPIError

from services.api.error_handlers import unexpected


def wrapped(error: Exception) -> DBAPIError:
    """``error`` as SQLAlchemy's asyncpg dialect hands it on: its sqlstate copied onto a DBAPI error."""
    adapted = AsyncAdapt_asyncpg_dbapi.Error(str(error), error)  # type: ignore[no-untyped-call]
    return DBAPIError(statement=None, params=None, orig=adapted)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.CannotConnectNowError("the database system is not yet accepting connections"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_a_database_that_cannot_serve_now_is_503_with_retry_after(error: Exception) -> None:
    response = unexpected(RequestFactory().post("/v1/create_user"), wrapped(error))
    assert response.status_code == 503 and response.headers["Retry-After"]


def test_any_other_database_error_is_500() -> None:
    error = asyncpg.exceptions.DivisionByZeroError("division by zero")
    assert unexpected(RequestFactory().post("/v1/create_user"), wrapped(error)).status_code == 500
