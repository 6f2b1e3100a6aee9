"""docker-compose.yml runs real ``signup`` subcommands with known settings, and compose accepts it."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from shared.settings import setting_names
from signup_cli.main import COMMANDS
from tests.support import repo_root

# Read by shared/telemetry.py and the OpenTelemetry SDK, as OpenTelemetry names them (DESIGN §12).
OTEL_VARIABLES = {
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_TRACES_SAMPLER",
}
# Variables the compose file sets that are not signup settings, each with the reason it is there.
NOT_SETTINGS = OTEL_VARIABLES | {
    "dramatiq_worker_timeout",  # read by Dramatiq's Redis consumer itself (DESIGN §5)
    "POSTGRES_USER",  # the postgres image
    "POSTGRES_PASSWORD",  # the postgres image
    "MP_SMTP_AUTH_ACCEPT_ANY",  # Mailpit: accept the worker's SMTP_USERNAME/PASSWORD if set
    "MP_SMTP_AUTH_ALLOW_INSECURE",  # Mailpit: ... over plain SMTP
    "TEST_PG_ADMIN_URL",  # tests/conftest.py: where the test fixtures create their databases
    "CI",  # tests/support.py: a missing server fails instead of skipping
    "COLLECTOR_OTLP_ENABLED",  # Jaeger: accept OTLP (the default in recent images; explicit for older ones)
    "REDISCLI_AUTH",  # Redis: the password the healthcheck's redis-cli sends
}
# Built by compose from the passwords below, not overridable as a whole (docker-compose v1 has no nested ${}).
CONNECTIONS = {
    "DATABASE_URL": "postgresql://postgres:${POSTGRES_PASSWORD:-dev-only-postgres}@postgres:5432/signup",
    "REDIS_URL": "redis://:${REDIS_PASSWORD:-dev-only-redis}@redis:6379/0",
}
# Variables compose reads that no process does: .env.example documents them in a section of their own.
COMPOSE_SECRETS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD")
IMAGES_WITHOUT_SIGNUP = {"postgres", "redis", "mailpit", "jaeger", "prometheus"}


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose = yaml.safe_load((repo_root() / "docker-compose.yml").read_text())
    found: dict[str, Any] = compose["services"]
    return found


def signup_services(services: dict[str, Any]) -> dict[str, Any]:
    return {name: service for name, service in services.items() if name not in IMAGES_WITHOUT_SIGNUP}


def test_the_stack_has_every_service(services: dict[str, Any]) -> None:
    assert set(services) == {
        "postgres",
        "redis",
        "mailpit",
        "jaeger",
        "prometheus",
        "migrate",
        "api",
        "relay",
        "worker",
        "test",
    }


def test_every_command_is_a_signup_subcommand_or_just_test(services: dict[str, Any]) -> None:
    for name, service in signup_services(services).items():
        command = service["command"]
        assert command == ["just", "test"] or command[0] in COMMANDS, f"{name}: {command}"
    assert [services[name]["command"][0] for name in ("migrate", "api", "relay", "worker")] == [
        "migrate",
        "api",
        "relay",
        "worker",
    ]


def test_every_variable_is_a_known_setting(services: dict[str, Any]) -> None:
    known = set(setting_names()) | NOT_SETTINGS
    for name, service in services.items():
        unknown = set(service.get("environment", {})) - known
        assert not unknown, f"{name} sets variables no process reads: {sorted(unknown)}"


def test_every_setting_has_a_default_overridable_from_env(services: dict[str, Any]) -> None:
    environment = services["api"]["environment"]
    assert set(environment) == set(setting_names()) | OTEL_VARIABLES
    for variable, value in environment.items():
        if variable in CONNECTIONS:
            assert value == CONNECTIONS[variable], variable
            continue
        assert re.fullmatch(rf"\$\{{{variable}:-.*\}}", str(value)), f"{variable}: {value}"


def test_dependencies_name_existing_services(services: dict[str, Any]) -> None:
    for name, service in services.items():
        missing = set(service.get("depends_on", {})) - set(services)
        assert not missing, f"{name} depends on unknown services {missing}"


def test_services_start_after_a_successful_migration(services: dict[str, Any]) -> None:
    for name in ("api", "relay", "worker"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert services["migrate"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["worker"]["environment"]["dramatiq_worker_timeout"] == "${DRAMATIQ_WORKER_TIMEOUT:-50}"


def test_compose_accepts_the_file() -> None:
    client = shutil.which("docker-compose")
    if client is None:
        pytest.skip("no docker-compose client (.ci/run validates the file where one exists)")
    for args in ([], ["--profile", "test"], ["--profile", "tracing"], ["--profile", "monitoring"]):
        result = subprocess.run(
            [client, *args, "config", "-q"], cwd=repo_root(), capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr


def test_prometheus_scrapes_every_service_with_the_rules_on_loopback_only(services: dict[str, Any]) -> None:
    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["monitoring"] and prometheus["image"].startswith("prom/prometheus")
    assert all(str(port).startswith("127.0.0.1:") for port in prometheus["ports"])
    mounted = {volume.split(":")[1] for volume in prometheus["volumes"]}
    assert mounted == {"/etc/prometheus/prometheus.yml", "/etc/prometheus/alerts.yml"}
    config = yaml.safe_load((repo_root() / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    assert {job["job_name"] for job in config["scrape_configs"]} == {"api", "relay", "worker"}


def test_the_console_is_published_on_loopback_only(services: dict[str, Any]) -> None:
    published = [str(port) for port in services["api"]["ports"] if "CONSOLE_PORT" in str(port)]
    assert published == ["127.0.0.1:${CONSOLE_PORT:-8081}:${CONSOLE_PORT:-8081}"]


def test_only_the_api_is_published_beyond_loopback(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for port in map(str, service.get("ports", [])):
            assert name == "api" or port.startswith("127.0.0.1:"), (
                f"{name} publishes {port} on every interface"
            )
    assert "ports" not in services["postgres"] and "ports" not in services["redis"]


def test_postgres_and_redis_take_their_passwords_from_env() -> None:
    text = (repo_root() / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)["services"]
    redis_password = "${REDIS_PASSWORD:-dev-only-redis}"
    assert compose["redis"]["command"][-2:] == ["--requirepass", redis_password]
    assert compose["redis"]["environment"]["REDISCLI_AUTH"] == redis_password
    assert (
        compose["postgres"]["environment"]["POSTGRES_PASSWORD"] == "${POSTGRES_PASSWORD:-dev-only-postgres}"
    )
    # Every use of a password names the same default, or a service would knock with the wrong one.
    for name in COMPOSE_SECRETS:
        assert len(set(re.findall(rf"\$\{{{name}(:-[^}}]*)?\}}", text))) == 1, name
    assert "TEST_PG_ADMIN_URL" in compose["test"]["environment"]
    assert (
        "${POSTGRES_PASSWORD:-dev-only-postgres}@postgres"
        in compose["test"]["environment"]["TEST_PG_ADMIN_URL"]
    )
