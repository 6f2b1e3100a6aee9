"""``SMTP_TLS`` and ``SMTP_CA_FILE`` against real aiosmtpd servers that speak STARTTLS, implicit TLS or
neither, with certificates a private CA made for the test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from services.worker.errors import TransientError
from services.worker.mailer import SmtpMailer
from shared.settings import Settings, load_settings
from tests.certificates import Authority, authority
from tests.support import free_port, render

PASSWORD = "smtp-password-never-in-an-error"


@dataclass
class Server:
    """What one SMTP server saw: for each message and each login, whether it came over TLS."""

    port: int = field(default_factory=free_port)
    deliveries: list[bool] = field(default_factory=list)
    logins: list[bool] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.deliveries.append(_over_tls(server))
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        self.logins.append(_over_tls(server))
        return AuthResult(success=isinstance(data, LoginPassword) and data.password == PASSWORD.encode())


def _over_tls(server: Any) -> bool:
    return server.transport.get_extra_info("ssl_object") is not None


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tls")


@pytest.fixture(scope="module")
def private_ca(tls_dir: Path) -> Authority:
    return authority(tls_dir, "private")


@pytest.fixture
def serve(tls_dir: Path, private_ca: Authority) -> Iterator[Any]:
    """``serve(starttls=…, implicit=…)``: an aiosmtpd server with a certificate the private CA signed,
    taking logins in clear too (``auth_require_tls=False``: a server a client must not trust to refuse)."""
    controllers: list[Controller] = []

    def start(*, starttls: bool = False, implicit: bool = False) -> Server:
        server = Server()
        context = private_ca.server_context(tls_dir)
        controller = Controller(
            server,
            hostname="127.0.0.1",
            port=server.port,
            tls_context=context if starttls else None,
            ssl_context=context if implicit else None,
            authenticator=server.authenticate,
            auth_require_tls=False,
        )
        controller.start()
        controllers.append(controller)
        return server

    yield start
    for controller in controllers:
        controller.stop()


def settings_for(server: Server, **overrides: Any) -> Settings:
    return load_settings({}, smtp_host="127.0.0.1", smtp_port=server.port, smtp_timeout_ms=5000, **overrides)


async def send(settings: Settings) -> None:
    mailer = SmtpMailer(settings)
    message = render("verify_email", "en", settings=settings)
    try:
        await mailer.send(message)
    finally:
        for client in mailer._idle:
            client.close()


async def test_auto_upgrades_with_starttls_when_the_server_offers_it(
    serve: Any, private_ca: Authority
) -> None:
    server = serve(starttls=True)
    await send(settings_for(server, smtp_tls="auto", smtp_ca_file=str(private_ca.ca_file)))
    assert server.deliveries == [True]


async def test_auto_is_the_default_and_sends_in_clear_when_no_starttls_is_offered(serve: Any) -> None:
    server = serve()
    settings = settings_for(server)
    assert settings.smtp_tls == "auto"
    await send(settings)
    assert server.deliveries == [False]


async def test_auto_never_logs_in_without_tls(serve: Any) -> None:
    server = serve()
    with pytest.raises(TransientError, match="login needs TLS") as raised:
        await send(settings_for(server, smtp_username="worker", smtp_password=PASSWORD))
    assert server.logins == [] and server.deliveries == []
    assert PASSWORD not in str(raised.value)


async def test_auto_logs_in_only_after_the_upgrade(serve: Any, private_ca: Authority) -> None:
    server = serve(starttls=True)
    ca_file = str(private_ca.ca_file)
    await send(settings_for(server, smtp_ca_file=ca_file, smtp_username="worker", smtp_password=PASSWORD))
    assert server.logins == [True] and server.deliveries == [True]


async def test_require_refuses_a_server_without_starttls(serve: Any) -> None:
    server = serve()
    with pytest.raises(TransientError, match="offers no STARTTLS and SMTP_TLS=require"):
        await send(settings_for(server, smtp_tls="require"))
    assert server.deliveries == []


async def test_off_never_upgrades(serve: Any) -> None:
    server = serve(starttls=True)
    await send(settings_for(server, smtp_tls="off"))
    assert server.deliveries == [False]


async def test_implicit_tls_speaks_tls_from_the_first_byte(serve: Any, private_ca: Authority) -> None:
    server = serve(implicit=True)
    await send(settings_for(server, smtp_tls="implicit", smtp_ca_file=str(private_ca.ca_file)))
    assert server.deliveries == [True]


@pytest.mark.parametrize("mode", ["auto", "require", "implicit"])
async def test_a_certificate_from_another_ca_is_refused(serve: Any, tls_dir: Path, mode: str) -> None:
    server = serve(starttls=mode != "implicit", implicit=mode == "implicit")
    other = authority(tls_dir, "other")
    with pytest.raises(TransientError, match="certificate did not verify"):
        await send(settings_for(server, smtp_tls=mode, smtp_ca_file=str(other.ca_file)))
    assert server.deliveries == []


async def test_without_a_ca_file_the_system_store_does_not_know_a_private_ca(serve: Any) -> None:
    server = serve(starttls=True)
    with pytest.raises(TransientError, match="certificate did not verify"):
        await send(settings_for(server, smtp_tls="require"))
    assert server.deliveries == []
