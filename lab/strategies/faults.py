"""The faults the lab injects into the product's processes, all off by default.

In the API, between the dispatch and the commit: a slow commit (``FAULT_COMMIT_DELAY_MS``) and a random
rollback (``FAULT_ROLLBACK_RATIO``), through ``create_app``'s ``before_commit``. In the worker, the course's
``SkipRetry`` (``WORKER_SKIP_RETRY_MISSING_USER``): a message whose user is not visible is dropped instead of
retried, through ``build_broker``'s ``handlers``.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from litestar import Request, Response
from litestar.types import ExceptionHandlersMap

from services.api.schemas import ErrorBody
from services.worker.actors import Handler
from services.worker.errors import UserNotVisible
from services.worker.handlers import send_verify_email
from shared.logging import get_logger
from shared.messages import Message, SendVerifyEmail

log = get_logger()

RETRY_AFTER_S = "2"


class InjectedRollback(Exception):
    """``FAULT_ROLLBACK_RATIO`` chose this signup's transaction to roll back (an experiment, not a bug)."""


class Faults:
    """The API's fault-injection point, between the dispatch and the commit."""

    def __init__(self, *, commit_delay_ms: int = 0, rollback_ratio: float = 0.0) -> None:
        self.commit_delay_ms = commit_delay_ms
        self.rollback_ratio = rollback_ratio

    async def before_commit(self) -> None:
        if self.commit_delay_ms:
            await asyncio.sleep(self.commit_delay_ms / 1000)
        if self.rollback_ratio and random.random() < self.rollback_ratio:
            raise InjectedRollback("injected rollback after dispatch")


def injected_rollback(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    """A rolled-back signup is answered as the product answers a backing service that failed: 503."""
    log.info("signup rolled back by fault injection")
    body = ErrorBody(error="signup rolled back (FAULT_ROLLBACK_RATIO)")
    return Response(body, status_code=503, headers={"Retry-After": RETRY_AFTER_S})


ROLLBACK_HANDLERS: ExceptionHandlersMap = {InjectedRollback: injected_rollback}


async def send_verify_email_or_skip(command: SendVerifyEmail, **kwargs: Any) -> None:
    """The product's handler, except that a missing user drops the message, as the course's ``SkipRetry``."""
    try:
        await send_verify_email(command, **kwargs)
    except UserNotVisible:
        log.warning("user not found; dropping the message (SkipRetry)", username=command.username)


SKIP_RETRY_HANDLERS: dict[type[Message], Handler] = {SendVerifyEmail: send_verify_email_or_skip}
