"""HTTP routes (DESIGN §8): each parses its input, calls one use case, lets error_handlers.py map errors."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated, Any

import msgspec
import sqlalchemy as sa
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.enums import RequestEncodingType
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import HeaderParameter, Parameter
from prometheus_client import Counter

from services.api.admission import Place, watch_client
from services.api.idempotency import HEADER as IDEMPOTENCY_HEADER
from services.api.idempotency import IdempotencyKey, find_answer
from services.api.openapi import body_operation
from services.api.pages import ALREADY_VERIFIED, CONFIRM, RESEND_ACCEPTED, VERIFIED, page, wants_html
from services.api.resend import ResendBusy
from services.api.schemas import (
    Accepted,
    CreateUserRequest,
    CreateUserResponse,
    ErrorBody,
    ResendVerifyEmailRequest,
    VerifyEmailForm,
    VerifyEmailResponse,
    parse_create_user,
    parse_resend,
    parse_verify_form,
)
from services.api.signup import Taken, sign_up, verify_email
from shared.languages import choose_language

SIGNUPS = Counter("signup_api_signups_total", "Signups that committed")

# Every error the handlers in errors.py can answer, so that the OpenAPI is a contract a client (and the
# schemathesis fuzz test) can hold the API to. A status that is not listed here is a bug, a 500 above all.
_ERRORS = {
    400: "invalid request: one entry in `fields` per bad field",
    403: "a cross-site form post",
    404: "unknown verification link, or a wrong code",
    409: "the username or the email is taken; `fields` names which",
    410: "the verification link expired, or a newer email replaced it; `error` says which",
    413: "the request body is larger than API_MAX_BODY_BYTES",
    429: "this client asked too often; retry after Retry-After seconds",
    422: "this Idempotency-Key was used before with another request body",
    503: "a backing service is down, or too many signups are in progress; retry after Retry-After seconds",
}


def _errors(*statuses: int) -> dict[int, ResponseSpec]:
    return {
        status: ResponseSpec(data_container=ErrorBody, description=_ERRORS[status], generate_examples=False)
        for status in statuses
    }


@post(
    "/v1/create_user",
    status_code=200,
    operation_class=body_operation(CreateUserRequest),
    summary="Create a user; the verification email follows the commit",
    description=(
        "With an `Idempotency-Key` header, a retry with the same key and body returns the original answer "
        "(header `Idempotent-Replayed: true`) instead of creating the user again or answering 409."
    ),
    raises=[],
    responses=_errors(400, 409, 413, 422, 429, 503),
)
async def create_user(
    request: Request[Any, Any, Any],
    state: State,
    idempotency_key: Annotated[
        str | None,
        HeaderParameter(
            name=IDEMPOTENCY_HEADER,
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="a unique key per signup (e.g. a UUID); kept for API_IDEMPOTENCY_TTL_HOURS",
        ),
    ] = None,
) -> Response[CreateUserResponse]:
    state.clients.signups.take(state.clients.client_of(request.scope))
    body = await request.body()
    signup = parse_create_user(body, allow_smtputf8=state.settings.smtp_smtputf8)
    key = (
        IdempotencyKey.of(idempotency_key, signup, secret=state.idempotency_secret)
        if idempotency_key
        else None
    )
    # Its place in the queue once the body is in: a client slow to send it holds none meanwhile. A refusal
    # costs no database look-up, not even for a retry with a key (it retries after Retry-After).
    place = state.admission.enter()
    try:
        return await _sign_up(request, state, signup, key, place)
    finally:
        place.leave()


async def _sign_up(
    request: Request[Any, Any, Any],
    state: State,
    signup: CreateUserRequest,
    key: IdempotencyKey | None,
    place: Place,
) -> Response[CreateUserResponse]:
    ttl = timedelta(hours=state.settings.api_idempotency_ttl_hours)
    if key is not None and (stored := await find_answer(state.sessions, key, ttl=ttl)):
        return _replayed(stored)
    try:
        async with watch_client(request.receive) as gone:
            user = await sign_up(
                state.sessions,
                request=signup,
                dispatcher=state.dispatcher,
                before_commit=state.before_commit,
                trace_id=request.scope["state"].get("request_id"),
                ticket=state.admission.ticket(client_gone=gone, place=place),
                language=choose_language(
                    explicit=signup.language, accept_language=request.headers.get("accept-language")
                ),
                idempotency=key,
                idempotency_ttl=ttl,
                unverified_ttl=timedelta(hours=state.settings.unverified_account_ttl_hours),
            )
    except Taken:
        # The same key and body committed meanwhile (the two met on the username): the original answer.
        if key is not None and (stored := await find_answer(state.sessions, key, ttl=ttl)):
            return _replayed(stored)
        raise
    SIGNUPS.inc()
    return Response(CreateUserResponse(user=user))


def _replayed(answer: bytes) -> Response[CreateUserResponse]:
    original = msgspec.json.decode(answer, type=CreateUserResponse)
    return Response(original, headers={"Idempotent-Replayed": "true"})


@post(
    "/v1/resend_verify_email",
    status_code=202,
    operation_class=body_operation(ResendVerifyEmailRequest),
    summary="Send a new verification email; the same 202 whoever the address belongs to",
    description=(
        "An unverified user's address gets a new email with a new link (earlier links stop working), at most "
        "one per RESEND_MIN_INTERVAL_S and RESEND_MAX_PER_DAY a day. An unknown, verified or rate-limited "
        "address gets the very same answer, sent before the address is looked up, so that neither the answer "
        "nor its timing tells who has an account. The body may "
        "also come as application/x-www-form-urlencoded (the verification page's form); a client that "
        "prefers text/html then gets a page."
    ),
    raises=[],
    responses=_errors(400, 413, 429, 503),
)
async def resend_verify_email_route(request: Request[Any, Any, Any], state: State) -> Response[Accepted]:
    state.clients.resends.take(state.clients.client_of(request.scope))
    form = request.content_type[0] == RequestEncodingType.URL_ENCODED  # the HTML page's form
    body = parse_resend(await request.body(), form=form, allow_smtputf8=state.settings.smtp_smtputf8)
    if not state.resends.submit(email=body.email, trace_id=request.scope["state"].get("request_id")):
        raise ResendBusy
    if wants_html(request):
        return page(RESEND_ACCEPTED, status=202)
    return Response(Accepted(), status_code=202)


class CrossSiteForm(Exception):
    """A form posted from another site (the browser's ``Sec-Fetch-Site``): 403."""


@get(
    "/v1/verify_email",
    summary="Follow the link from the verification email",
    description=(
        "A client that prefers JSON verifies here (200 `{is_verified: true}`). A client that prefers "
        "text/html (a browser, a mail scanner fetching as one) gets a page with one button and nothing is "
        "verified: only that button's POST verifies."
    ),
    responses=_errors(400, 404, 410, 503),
)
async def verify_email_route(
    request: Request[Any, Any, Any],
    state: State,
    # Unbounded, an id past bigint reached asyncpg and failed with a 500 (found by the fuzz test). The bound
    # is the largest integer every JSON client holds exactly: below bigint's, and beyond any id we issue.
    email_id: Annotated[int, Parameter(ge=1, le=2**53 - 1)],
    secret_code: Annotated[str, Parameter(min_length=1, max_length=128)],
) -> Response[VerifyEmailResponse]:
    if wants_html(request):
        # A browser, or a mail scanner or link preview fetching as one: a page with one button, nothing
        # verified, nothing looked up. Only the button's POST verifies.
        return page(CONFIRM, status=200, link=(email_id, secret_code))
    await verify_email(
        state.reserved_sessions,
        email_id=email_id,
        secret_code=secret_code,
        unverified_ttl=timedelta(hours=state.settings.unverified_account_ttl_hours),
    )
    return Response(VerifyEmailResponse(is_verified=True))


@post(
    "/v1/confirm_email",
    status_code=200,
    operation_class=body_operation(VerifyEmailForm, "application/x-www-form-urlencoded"),
    summary="Verify from the confirmation page's button",
    description=(
        "The page that opening the link in a browser shows posts `email_id` and `secret_code` here "
        "(application/x-www-form-urlencoded, same origin): the answer is a page, or JSON for a client that "
        "prefers it. A request a browser marks as cross-site (`Sec-Fetch-Site`) is refused with 403."
    ),
    raises=[],
    responses=_errors(400, 403, 404, 410, 413, 503),
)
async def verify_email_form_route(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise CrossSiteForm
    form = parse_verify_form(await request.body())
    newly = await verify_email(
        state.reserved_sessions,
        email_id=form.email_id,
        secret_code=form.secret_code,
        unverified_ttl=timedelta(hours=state.settings.unverified_account_ttl_hours),
    )
    if wants_html(request):  # the error pages come from error_handlers.py
        return page(VERIFIED if newly else ALREADY_VERIFIED, status=200)
    return Response(VerifyEmailResponse(is_verified=True))


@get("/healthz", summary="Alive: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get(
    "/readyz",
    summary="Ready: the database (and Redis, where the dispatcher needs it) answer",
    responses={
        503: ResponseSpec(data_container=dict[str, str], description="a check failed; each names its state")
    },
)
async def readyz(state: State) -> Response[dict[str, str]]:
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2):
            async with state.reserved_engine.connect() as connection:
                await connection.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    if state.redis is not None:
        try:
            async with asyncio.timeout(2):
                await state.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unavailable: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    return Response(
        checks, status_code=200 if ready else 503, headers=None if ready else {"Retry-After": "2"}
    )
