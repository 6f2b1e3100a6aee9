"""Settings for every process, read once from the environment (DESIGN §7).

Each field is named as its environment variable, lower-cased. ``load_settings(process=...)`` validates the
settings that process reads at start and raises ``SettingsError`` with one line naming the variable and what
it expected, so that a typo in a deployment stops the process before it opens a single connection. A bad
value of a setting the process does not read (``READS``) stops only the processes that read it: this one
warns (``SettingsWarning``) and starts.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import warnings
from collections.abc import Callable, Mapping
from email.utils import parseaddr
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

import msgspec
from msgspec import Meta

NonNegativeInt = Annotated[int, Meta(ge=0)]
PositiveInt = Annotated[int, Meta(ge=1)]
Port = Annotated[int, Meta(ge=1, le=65535)]
SmtpTls = Literal["auto", "require", "implicit", "off"]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every setting of every process, with the defaults a local checkout needs."""

    database_url: str = "postgresql://postgres@localhost:5432/signup"
    """PostgreSQL; ``postgresql://`` and ``postgresql+asyncpg://`` are both accepted."""
    redis_url: str = "redis://localhost:6379/0"
    """Redis, the Dramatiq broker."""

    smtp_host: str = "localhost"
    smtp_port: Port = 1025
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_tls: SmtpTls = "auto"
    """How the worker protects the SMTP connection: ``auto`` upgrades with STARTTLS whenever the server offers
    it (and then never logs in without it); ``require`` refuses a server that does not offer STARTTLS;
    ``implicit`` speaks TLS from the first byte (port 465, "SMTPS"); ``off`` never uses TLS. Every TLS
    connection verifies the server's certificate and name."""
    smtp_ca_file: str = ""
    """A PEM file of the CA(s) that sign the SMTP server's certificate (a private relay): when set, only
    these are trusted for SMTP, not the system's. Empty: the system's CA store."""
    smtp_timeout_ms: PositiveInt = 10_000
    """How long the worker waits on the SMTP server before it gives up and retries."""
    smtp_smtputf8: bool = False
    """The SMTP server takes SMTPUTF8: only then does the API accept an address whose local part is not
    ASCII (пользователь@example.com). Domains need no such support: the worker sends to their ASCII form."""
    mail_from: str = "Signup <no-reply@signup.local>"
    """The emails' sender; only its address is used: the display name is ``PRODUCT_NAME``."""
    product_name: str = "Signup"
    """The service's name as people know it: in every email's subject, body and ``From`` display name."""
    public_base_url: str = "http://localhost:8080"
    """Base of the verification link in the email."""

    api_host: str = "0.0.0.0"  # noqa: S104 - the API is meant to be reachable in a container
    api_port: Port = 8080
    api_metrics_port: Annotated[int, Meta(ge=0, le=65535)] = 9100
    """The API's Prometheus ``/metrics``, on a port of its own (never the public one); 0 turns it off."""
    api_max_body_bytes: PositiveInt = 16_384
    """Larger request bodies are refused with 413 before they are parsed."""
    api_signup_concurrency: NonNegativeInt = 0
    """Signups at work at once (hashing or in their transaction); 0: one per CPU the process may use."""
    api_signup_max_waiting: NonNegativeInt = 0
    """Signups that may wait for a slot; 0: what the slots finish in ``API_SIGNUP_MAX_WAIT_MS``, measured."""
    api_signup_max_wait_ms: PositiveInt = 1000
    """A signup that waited this long for a slot is refused with 503 + Retry-After, before any work."""
    api_signup_deadline_ms: PositiveInt = 10_000
    """A signup not ready to commit this long after it arrived is rolled back (its client has likely gone)."""
    api_resend_max_pending: PositiveInt = 64
    """Resend requests answered and not yet run (they run after their ``202``); more get 503 + Retry-After."""
    api_header_timeout_ms: PositiveInt = 10_000
    """A connection must deliver a request's head (request line and headers) this long after it connected or
    got its previous answer, or it is closed: a client trickling its headers holds nothing for longer."""
    api_body_timeout_ms: PositiveInt = 10_000
    """A request's body must arrive this long after its head, or it is answered 408 and its connection
    closed."""
    api_max_connections: PositiveInt = 2048
    """Client connections open at once; one more gets 503 and is closed before anything of it is read. Keep
    it below the process's open-file limit (``ulimit -n``) less the database pools' connections."""
    api_reserved_pool_size: PositiveInt = 2
    """Database connections kept for verification and ``/readyz`` (and as many again in overflow), apart
    from the pool that signups and resends share: a flood of those cannot take them."""
    api_idempotency_ttl_hours: PositiveInt = 24
    """How long the answer to a request with an ``Idempotency-Key`` is kept for its retries."""
    api_client_signups_per_hour: NonNegativeInt = 20
    """Signups one client (IP address) may ask for per hour, in bursts of as many; more get 429 +
    Retry-After. Counted per API process. 0: no limit."""
    api_client_resends_per_hour: NonNegativeInt = 20
    """Resend requests one client (IP address) may make per hour, as above. 0: no limit."""
    api_trusted_proxies: str = ""
    """Comma-separated addresses or CIDR blocks of the proxies in front of the API: only a connection from
    one of them has its ``X-Forwarded-For`` read for the client's address. Empty: the peer is the client."""
    api_idempotency_secret: str = ""
    """Key of the stored request fingerprints (HMAC-SHA-256, password left out), the same in every API
    process: at least 32 characters. Empty: a random key per process (a warning at start), so a retry that
    reaches another replica, or the API after a restart, is refused with 422 instead of replayed."""

    relay_batch_size: PositiveInt = 500
    relay_poll_interval_ms: PositiveInt = 1000
    relay_lookahead_ms: NonNegativeInt = 10_000
    relay_metrics_port: Annotated[int, Meta(ge=0, le=65535)] = 9101
    """0 turns the relay's metrics endpoint off."""
    outbox_retention_hours: PositiveInt = 168
    """Handled rows published longer ago are purged; a row not yet handled is kept however old."""
    dead_letter_retention_hours: PositiveInt = 720
    """Dead letters older than this are purged by the relay; until then they stay for ``signup dlq``."""
    reconcile_interval_ms: NonNegativeInt = 10_000
    """How often the relay checks published, unhandled rows against Redis (DESIGN §13); 0 turns it off."""
    reconcile_grace_ms: PositiveInt = 30_000
    """A published row is checked only once it has waited this long unhandled (and as long again after a
    re-publish)."""
    reconcile_batch_size: PositiveInt = 1000
    """Rows checked per pass, at most: one SQL query and one Redis script call for all of them."""

    worker_max_retries: NonNegativeInt = 10
    worker_min_backoff_ms: NonNegativeInt = 1000
    worker_max_backoff_ms: NonNegativeInt = 300_000
    worker_threads: PositiveInt = 8
    worker_metrics_port: Annotated[int, Meta(ge=0, le=65535)] = 9102
    worker_code_secret: str = ""
    """Key of the verification codes (``HMAC-SHA-256(key, message id)``, shared/keys.py), the same in every
    worker: at least 32 characters, e.g. ``secrets.token_urlsafe(32)``. Empty: a random key per process (a
    warning at start), so a message redelivered to another process after a crash sends a new link and the
    first one stops working."""
    verify_email_ttl_minutes: PositiveInt = 15
    unverified_account_ttl_hours: PositiveInt = 24
    """An account still unverified this long after its signup gives its address (and username) up: its links
    stop working, resends skip it, and the next signup that meets it deletes it."""
    resend_min_interval_s: NonNegativeInt = 60
    """At most one verification email per user in this many seconds (the signup's counts too)."""
    resend_max_per_day: NonNegativeInt = 5
    """At most this many resent verification emails per user in any 24 hours."""
    mailbox_max_emails_per_day: NonNegativeInt = 10
    """At most this many emails (verification and signup notices together) to one mailbox in any 24 hours,
    whatever accounts ask: the mailbox as the provider delivers it (case, ``+tags`` and Gmail's dots do not
    make another). The worker drops the rest. 0: no cap."""

    console_operators: str = ""
    """The operator console's credentials, ``name:password`` pairs separated by commas (DESIGN §14). Empty
    (the default): no console. Each name is ``[a-z0-9_-]``, 1 to 40 characters; each password at least 16."""
    console_host: str = "127.0.0.1"
    """Where the console listens: its own port, never the public one (loopback unless set)."""
    console_port: Port = 8081
    console_cookie_secure: bool = True
    """Send the console's session cookie over HTTPS only; false for a console reached by plain HTTP on
    loopback (browsers treat http://127.0.0.1 and localhost as secure already)."""

    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def __repr__(self) -> str:
        # Settings end up in tracebacks and debug logs: never print the SMTP password or URL credentials.
        # (``str()`` is ``repr()`` too.)
        shown = {name: getattr(self, name) for name in self.__struct_fields__}
        for secret in _SECRETS:
            shown[secret] = "***" if getattr(self, secret) else ""
        shown["database_url"] = hide_password(self.database_url)
        shown["redis_url"] = hide_password(self.redis_url)
        return f"Settings({shown!r})"


# Settings that hold a password or a key: never shown, and a key must be long enough to be one.
_SECRETS = ("smtp_password", "console_operators", "worker_code_secret", "api_idempotency_secret")
_KEYS = ("worker_code_secret", "api_idempotency_secret")
MIN_KEY_CHARS = 32


def hide_password(url: str) -> str:
    """``url`` with the password of its user part, if it has one, replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


class SettingsError(ValueError):
    """A setting in the environment has a value that cannot be used."""


def setting_names() -> tuple[str, ...]:
    """The environment variable of every setting, in declaration order."""
    return tuple(name.upper() for name in Settings.__struct_fields__)


def read_environment(
    struct: type[msgspec.Struct],
    environ: Mapping[str, str],
    *,
    on_invalid: Callable[[str, SettingsError], None] | None = None,
) -> dict[str, Any]:
    """The fields of ``struct`` set in ``environ`` (each named as its field, upper-cased), converted to the
    field's type; an empty value leaves a field that is not a string unset. A value that cannot be converted
    raises ``SettingsError`` naming its variable, or, given ``on_invalid``, is passed to it with the field's
    name (which may raise) and left unset."""
    values: dict[str, Any] = {}
    for field in msgspec.structs.fields(struct):
        raw = environ.get(field.name.upper())
        if raw is None or (raw == "" and field.type is not str):
            continue
        try:
            values[field.name] = msgspec.convert(raw, field.type, strict=False)
        except msgspec.ValidationError as exc:
            message = str(exc).split(" - at ")[0]
            if get_origin(field.type) is Literal:
                message = f"expected one of {'|'.join(get_args(field.type))}"
            error = SettingsError(f"{field.name.upper()}={raw!r} is invalid: {message}")
            if on_invalid is None:
                raise error from None
            on_invalid(field.name, error)
    return values


# The settings each service process reads besides the ones every process does (``COMMON``), each named by
# its field or by a prefix ending in "_". tests/unit/test_settings.py checks them against the code.
COMMON = ("database_url", "redis_url", "log_")
READS: dict[str, tuple[str, ...]] = {
    "api": ("api_", "console_", "resend_", "unverified_account_ttl_hours", "smtp_smtputf8"),
    "relay": (
        "relay_",
        "reconcile_",
        "outbox_retention_hours",
        "dead_letter_retention_hours",
        # The broker's Retries middleware (shared/broker.py), built alike wherever a broker is.
        "worker_max_retries",
        "worker_min_backoff_ms",
        "worker_max_backoff_ms",
    ),
    "worker": (
        "worker_",
        "smtp_",
        "mail_from",
        "product_name",
        "public_base_url",
        "verify_email_ttl_minutes",
        "unverified_account_ttl_hours",
        "mailbox_max_emails_per_day",
        "outbox_retention_hours",
    ),
    "migrate": (),
}


def read_by(process: str | None) -> Callable[[str], bool]:
    """Whether ``process`` (a key of ``READS``; None: every process, as a tool that runs them all) reads the
    setting of a field name."""
    if process is None:
        return lambda field: True
    names = (*COMMON, *READS[process])
    return lambda field: any(field == n or (n.endswith("_") and field.startswith(n)) for n in names)


class SettingsWarning(UserWarning):
    """A setting this process does not read has a value that cannot be used: the processes that read it stop
    at start; this one carries on with its default."""


def load_settings(
    environ: Mapping[str, str] | None = None, *, process: str | None = None, **overrides: Any
) -> Settings:
    """Build the settings from ``environ`` (default ``os.environ``), then apply keyword ``overrides``.

    Raises ``SettingsError`` naming the first variable whose value is invalid among those ``process`` reads
    (``READS``; None: all of them). An invalid value of any other setting is left at its default, with a
    ``SettingsWarning`` naming it.
    """
    env = os.environ if environ is None else environ
    if "SMTP_STARTTLS" in env:
        # A true value that went unread would quietly turn a required STARTTLS into an opportunistic one.
        raise SettingsError(
            "SMTP_STARTTLS is not a setting: SMTP_TLS=auto|require|implicit|off says how the worker uses TLS"
        )
    reads = read_by(process)

    def unread_or_raise(field: str, error: SettingsError) -> None:
        if reads(field):
            raise error
        warnings.warn(f"{error}; signup {process} does not read it", SettingsWarning, stacklevel=3)

    values = read_environment(Settings, env, on_invalid=unread_or_raise)
    values.update(overrides)
    settings = Settings(**values)
    for field, check in _CHECKS.items():
        try:
            check(settings)
        except SettingsError as exc:
            unread_or_raise(field, exc)
            settings = msgspec.structs.replace(settings, **{field: getattr(Settings(), field)})
    return settings


OPERATOR_NAME = re.compile(r"[a-z0-9_-]{1,40}")
MIN_OPERATOR_PASSWORD = 16


def console_operators(settings: Settings) -> dict[str, str]:
    """``CONSOLE_OPERATORS`` as {name: password}; empty when the console is off. Raises ``SettingsError``
    (never showing a password) for a malformed entry, a repeated name or a short password."""
    operators: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in settings.console_operators.split(","))):
        name, colon, password = entry.partition(":")
        if not colon or not OPERATOR_NAME.fullmatch(name) or name in operators:
            raise SettingsError(
                f"CONSOLE_OPERATORS is invalid: entry {len(operators) + 1} is not a new name:password "
                "with a name of [a-z0-9_-]{1,40}"
            )
        if len(password) < MIN_OPERATOR_PASSWORD:
            raise SettingsError(
                f"CONSOLE_OPERATORS is invalid: the password of {name!r} is shorter than "
                f"{MIN_OPERATOR_PASSWORD} characters"
            )
        operators[name] = password
    return operators


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(setting: str) -> tuple[Network, ...]:
    """``API_TRUSTED_PROXIES`` (comma-separated addresses or CIDR blocks) as networks; raises ValueError."""
    return tuple(
        ipaddress.ip_network(part.strip(), strict=False) for part in setting.split(",") if part.strip()
    )


def smtp_tls_context(settings: Settings) -> ssl.SSLContext:
    """The context every TLS connection to the SMTP server verifies its certificate and name with: only
    ``SMTP_CA_FILE``'s CAs when it is set, else the system's. Raises ``OSError`` or ``ssl.SSLError`` for a
    file that cannot be read as PEM certificates."""
    return ssl.create_default_context(cafile=settings.smtp_ca_file or None)


def _check_proxies(settings: Settings) -> None:
    try:
        trusted_networks(settings.api_trusted_proxies)
    except ValueError as exc:
        raise SettingsError(
            f"API_TRUSTED_PROXIES={settings.api_trusted_proxies!r} is invalid: {exc}"
        ) from None


def _check_smtp_ca_file(settings: Settings) -> None:
    if not settings.smtp_ca_file:
        return
    if settings.smtp_tls == "off":
        raise SettingsError("SMTP_CA_FILE is set but SMTP_TLS=off: the worker would never use it")
    try:
        smtp_tls_context(settings)
    except OSError as exc:  # ssl.SSLError is one
        reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
        raise SettingsError(f"SMTP_CA_FILE={settings.smtp_ca_file!r} is invalid: {reason}") from None


def _check_key(name: str) -> Callable[[Settings], None]:
    def check(settings: Settings) -> None:
        value = getattr(settings, name)
        if value and len(value) < MIN_KEY_CHARS:
            raise SettingsError(f"{name.upper()} is invalid: a key needs {MIN_KEY_CHARS} characters at least")

    return check


def _check_product_name(settings: Settings) -> None:
    if not settings.product_name.strip() or any(char in settings.product_name for char in "\r\n"):
        raise SettingsError(f"PRODUCT_NAME={settings.product_name!r} is invalid: expected a one-line name")


def _check_mail_from(settings: Settings) -> None:
    if "@" not in parseaddr(settings.mail_from)[1]:
        raise SettingsError(f"MAIL_FROM={settings.mail_from!r} is invalid: expected an email address")


def _check_database_url(settings: Settings) -> None:
    if not settings.database_url.startswith(("postgresql://", "postgres://", "postgresql+asyncpg://")):
        shown = hide_password(settings.database_url)
        raise SettingsError(f"DATABASE_URL={shown!r} is invalid: expected postgresql://…")


def _check_redis_url(settings: Settings) -> None:
    if not settings.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(f"REDIS_URL={hide_password(settings.redis_url)!r} is invalid: expected redis://…")


def _check_public_base_url(settings: Settings) -> None:
    if not settings.public_base_url.startswith(("http://", "https://")):
        raise SettingsError(f"PUBLIC_BASE_URL={settings.public_base_url!r} is invalid: expected http(s)://…")


# The checks beyond a value's type, each run by the processes that read its setting, in this order.
_CHECKS: dict[str, Callable[[Settings], object]] = {
    "database_url": _check_database_url,
    "redis_url": _check_redis_url,
    "public_base_url": _check_public_base_url,
    **{name: _check_key(name) for name in _KEYS},
    "api_trusted_proxies": _check_proxies,
    "smtp_ca_file": _check_smtp_ca_file,
    "product_name": _check_product_name,
    "mail_from": _check_mail_from,
    "console_operators": console_operators,
}
