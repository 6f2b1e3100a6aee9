from __future__ import annotations

import re

import pytest

from lab.strategies.knobs import knobs_set, load_knobs
from shared.logging import mask_email
from shared.settings import Settings, SettingsError, load_settings, setting_names
from tests.support import repo_root


def test_defaults_need_no_environment() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.worker_max_retries == 10


def test_values_are_converted_from_strings() -> None:
    settings = load_settings(
        {"WORKER_MAX_RETRIES": "3", "SMTP_STARTTLS": "true", "API_MAX_BODY_BYTES": "2048"}
    )
    assert (settings.worker_max_retries, settings.smtp_starttls, settings.api_max_body_bytes) == (
        3,
        True,
        2048,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WORKER_MAX_RETRIES", "ten"),
        ("WORKER_MAX_RETRIES", "-1"),
        ("SMTP_PORT", "0"),
        ("API_PORT", "70000"),
        ("SMTP_STARTTLS", "maybe"),
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
    assert sorted(listed) == sorted(setting_names())


def test_mask_email() -> None:
    assert mask_email("alice@example.com") == "a***@example.com"
    assert mask_email("nonsense") == "***"


def test_the_labs_knobs_are_no_settings_of_the_product() -> None:
    lab_only = {"DISPATCH_STRATEGY": "eventually", "FAULT_ROLLBACK_RATIO": "1.5"}
    assert load_settings(lab_only) == Settings()
    with pytest.raises(SettingsError, match="DISPATCH_STRATEGY='eventually' is invalid"):
        load_knobs(lab_only)
    assert not knobs_set({}) and knobs_set({"WORKER_SKIP_RETRY_MISSING_USER": "true"})
