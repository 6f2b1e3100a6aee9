from __future__ import annotations

import re

import pytest

from shared.logging import mask_email
from shared.settings import Settings, SettingsError, load_settings, setting_names
from tests.support import repo_root


def test_defaults_need_no_environment() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.dispatch_strategy == "outbox" and settings.worker_max_retries == 10


def test_values_are_converted_from_strings() -> None:
    settings = load_settings(
        {"WORKER_MAX_RETRIES": "3", "SMTP_STARTTLS": "true", "FAULT_ROLLBACK_RATIO": "0.2"}
    )
    assert (settings.worker_max_retries, settings.smtp_starttls, settings.fault_rollback_ratio) == (
        3,
        True,
        0.2,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WORKER_MAX_RETRIES", "ten"),
        ("WORKER_MAX_RETRIES", "-1"),
        ("FAULT_ROLLBACK_RATIO", "1.5"),
        ("DISPATCH_STRATEGY", "eventually"),
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


def test_repr_hides_the_smtp_password() -> None:
    assert "hunter2" not in repr(load_settings({"SMTP_PASSWORD": "hunter2"}))


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    text = (repo_root() / ".env.example").read_text()
    listed = re.findall(r"^([A-Z0-9_]+)=", text, flags=re.MULTILINE)
    assert sorted(listed) == sorted(setting_names())


def test_mask_email() -> None:
    assert mask_email("alice@example.com") == "a***@example.com"
    assert mask_email("nonsense") == "***"
