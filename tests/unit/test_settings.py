from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from lab.strategies.knobs import knobs_set, load_knobs
from shared.logging import mask_email
from shared.settings import (
    READS,
    Settings,
    SettingsError,
    SettingsWarning,
    load_settings,
    read_by,
    setting_names,
)
from tests.certificates import authority
from tests.support import repo_root


def test_defaults_need_no_environment() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.worker_max_retries == 10


def test_values_are_converted_from_strings() -> None:
    settings = load_settings({"WORKER_MAX_RETRIES": "3", "SMTP_TLS": "require", "API_MAX_BODY_BYTES": "2048"})
    assert (settings.worker_max_retries, settings.smtp_tls, settings.api_max_body_bytes) == (
        3,
        "require",
        2048,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WORKER_MAX_RETRIES", "ten"),
        ("WORKER_MAX_RETRIES", "-1"),
        ("SMTP_PORT", "0"),
        ("API_PORT", "70000"),
        ("SMTP_TLS", "maybe"),
        ("SMTP_CA_FILE", "/nonexistent/ca.pem"),
        ("DATABASE_URL", "mysql://localhost/signup"),
        ("REDIS_URL", "localhost:6379"),
        ("LOG_FORMAT", "xml"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings({name: value})
    message = str(error.value)
    assert message.startswith(f"{name}=") and "\n" not in message


def test_a_choice_names_what_it_accepts() -> None:
    with pytest.raises(
        SettingsError, match=r"^SMTP_TLS='yes' is invalid: expected one of auto\|require\|implicit\|off$"
    ):
        load_settings({"SMTP_TLS": "yes"})


def test_smtp_starttls_is_refused_rather_than_ignored() -> None:
    # Read as nothing, SMTP_STARTTLS=true would quietly turn a required STARTTLS into an opportunistic one.
    with pytest.raises(SettingsError, match=r"^SMTP_STARTTLS is not a setting: SMTP_TLS="):
        load_settings({"SMTP_STARTTLS": "true"})


def test_the_smtp_ca_file_must_hold_certificates_and_tls_must_be_on(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate")
    with pytest.raises(SettingsError, match=r"^SMTP_CA_FILE='.*ca.pem' is invalid: "):
        load_settings({"SMTP_CA_FILE": str(not_pem)})
    ca_file = str(authority(tmp_path, "private").ca_file)
    with pytest.raises(SettingsError, match=r"^SMTP_CA_FILE is set but SMTP_TLS=off"):
        load_settings({"SMTP_CA_FILE": ca_file, "SMTP_TLS": "off"})
    assert load_settings({"SMTP_CA_FILE": ca_file}).smtp_ca_file == ca_file


def test_repr_and_str_hide_the_smtp_password_and_the_url_passwords() -> None:
    settings = load_settings(
        {
            "SMTP_PASSWORD": "hunter2",
            "WORKER_CODE_SECRET": "code-secret-" + "k" * 32,
            "DATABASE_URL": "postgresql+asyncpg://app:pg-secret@db.internal:5432/signup",
            "REDIS_URL": "redis://:redis-secret@cache.internal:6379/0",
        }
    )
    for shown in (repr(settings), str(settings), f"{settings}"):
        assert "kkkk" not in shown
        assert not {"hunter2", "pg-secret", "redis-secret"} & set(re.findall(r"[\w-]+", shown)), shown
        # What is not secret stays, so that the line still says where the process connects.
        assert "postgresql+asyncpg://app:***@db.internal:5432/signup" in shown
        assert "redis://:***@cache.internal:6379/0" in shown
    assert settings.database_url.endswith("app:pg-secret@db.internal:5432/signup")  # hidden, not changed


def test_a_key_setting_shorter_than_32_characters_is_refused_without_being_shown() -> None:
    with pytest.raises(SettingsError, match=r"^WORKER_CODE_SECRET is invalid: a key needs 32") as raised:
        load_settings({"WORKER_CODE_SECRET": "short-key"})
    assert "short-key" not in str(raised.value)
    assert load_settings({"WORKER_CODE_SECRET": ""}).worker_code_secret == ""  # empty: random per process


def test_an_invalid_url_is_reported_without_its_password() -> None:
    with pytest.raises(SettingsError) as error:
        load_settings({"DATABASE_URL": "mysql://app:pg-secret@db/signup"})
    assert "pg-secret" not in str(error.value) and "app:***@db" in str(error.value)


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    text = (repo_root() / ".env.example").read_text()
    listed = re.findall(r"^([A-Z0-9_]+)=", text, flags=re.MULTILINE)
    # The processes' settings, and the passwords docker-compose.yml builds their connections with.
    assert sorted(listed) == sorted((*setting_names(), "POSTGRES_PASSWORD", "REDIS_PASSWORD"))


def test_mask_email() -> None:
    assert mask_email("alice@example.com") == "a***@example.com"
    assert mask_email("nonsense") == "***"


def test_the_labs_knobs_are_no_settings_of_the_product() -> None:
    lab_only = {"DISPATCH_STRATEGY": "eventually", "FAULT_ROLLBACK_RATIO": "1.5"}
    assert load_settings(lab_only) == Settings()
    with pytest.raises(SettingsError, match="DISPATCH_STRATEGY='eventually' is invalid"):
        load_knobs(lab_only)
    assert not knobs_set({}) and knobs_set({"WORKER_SKIP_RETRY_MISSING_USER": "true"})


@pytest.mark.parametrize(
    ("process", "name", "value"),
    [
        ("api", "WORKER_THREADS", "eight"),
        ("api", "SMTP_TLS", "maybe"),
        ("api", "MAIL_FROM", "nobody"),
        ("relay", "API_PORT", "70000"),
        ("worker", "CONSOLE_OPERATORS", "ops:short"),
        ("migrate", "RELAY_BATCH_SIZE", "0"),
    ],
)
def test_a_bad_value_of_a_setting_another_process_reads_is_left_at_its_default(
    process: str, name: str, value: str
) -> None:
    with pytest.warns(
        SettingsWarning, match=rf"^{name}\b.* is invalid: .*; signup {process} does not read it$"
    ):
        settings = load_settings({name: value, "API_MAX_BODY_BYTES": "2048"}, process=process)
    assert getattr(settings, name.lower()) == getattr(Settings(), name.lower())
    assert settings.api_max_body_bytes == 2048  # the valid ones are read all the same
    with pytest.raises(SettingsError, match=rf"^{name}"):
        load_settings({name: value})  # a tool that runs every process reads them all


@pytest.mark.parametrize(
    ("process", "name", "value"),
    [
        ("api", "API_PORT", "x"),
        ("api", "CONSOLE_OPERATORS", "ops:short"),
        ("relay", "RECONCILE_BATCH_SIZE", "0"),
        ("worker", "SMTP_TLS", "maybe"),
        ("worker", "PUBLIC_BASE_URL", "example.com"),
        ("migrate", "DATABASE_URL", "mysql://localhost/signup"),
        ("migrate", "LOG_LEVEL", "loud"),
    ],
)
def test_a_bad_value_of_a_setting_the_process_reads_stops_it(process: str, name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=rf"^{name}"):
        load_settings({name: value}, process=process)


def settings_read_in(paths: list[Path]) -> set[str]:
    """The settings fields named as an attribute (``settings.x``, ``s.x``) anywhere in ``paths``."""
    fields = set(Settings.__struct_fields__)
    return {
        node.attr
        for path in paths
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in fields
    }


# Where each process's own code is; shared/ is checked apart.
PROCESS_CODE = {
    "api": ["services/api", "services/admin"],
    "relay": ["services/relay"],
    "worker": ["services/worker"],
    "migrate": ["signup_cli/commands.py", "shared/migrate.py"],
}


@pytest.mark.parametrize("process", sorted(READS))
def test_a_process_reads_no_setting_it_does_not_validate(process: str) -> None:
    root = repo_root()
    paths = [
        p for place in PROCESS_CODE[process] for p in sorted((root / place).rglob("*.py")) or [root / place]
    ]
    reads = read_by(process)
    assert paths and {field for field in settings_read_in(paths) if not reads(field)} == set()


def test_shared_code_reads_what_every_process_validates_or_says_who_reads_it() -> None:
    # shared/broker.py builds Dramatiq's Retries middleware for relay and worker alike.
    root = repo_root()
    modules = [p for p in sorted((root / "shared").glob("*.py")) if p.name != "settings.py"]
    for path in modules:
        users = ("relay", "worker") if path.name == "broker.py" else tuple(READS)
        unread = {f for f in settings_read_in([path]) for user in users if not read_by(user)(f)}
        assert unread == set(), path.name
