"""deploy/Dockerfile downloads only locked Python packages and Debian packages, runs as non-root, and its
runtime image carries the services alone, owned by root."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.support import repo_root


@pytest.fixture(scope="module")
def instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = (repo_root() / "deploy" / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    return [
        line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def stages(instructions: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in instructions:
        if line.startswith("FROM "):
            current = found.setdefault(line.split()[-1], [])
        current.append(line)
    return found


def test_nothing_is_fetched_outside_the_lock_and_debian(instructions: list[str]) -> None:
    for line in instructions:
        assert not re.search(r"\b(curl|wget)\b|^ADD\s+https?://|--from=ghcr\.io|astral", line), line
        if "pip install" in line:
            assert re.search(
                r'pip install --no-cache-dir "uv==\$\{UV_VERSION\}"( "rust-just==\$\{JUST_VERSION\}")?$', line
            ), line
        if re.search(r"\buv (sync|pip|add|lock)\b", line):
            assert "uv sync --frozen" in line, line
    assert any("uv sync --frozen --no-dev --no-editable" in line for line in instructions)


def test_every_stage_builds_on_python_3_11_slim(instructions: list[str]) -> None:
    assert any(line.startswith("ARG PYTHON_IMAGE=python:3.11-slim") for line in instructions)
    assert all(
        line.startswith("FROM ${PYTHON_IMAGE} AS ") for line in instructions if line.startswith("FROM")
    )


def test_the_runtime_stage_has_no_build_tools_and_runs_signup_as_non_root(instructions: list[str]) -> None:
    runtime = stages(instructions)["runtime"]
    assert not any(re.search(r"\b(pip|uv|apt-get|gcc)\b", line) for line in runtime if line.startswith("RUN"))
    users = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert 'ENTRYPOINT ["signup"]' in runtime


def test_the_image_carries_the_whole_package_including_migrations(instructions: list[str]) -> None:
    copied = {
        source
        for line in stages(instructions)["build"]
        if line.startswith("COPY ")
        for source in line.split()[1:-1]
    }
    pyproject = tomllib.loads((repo_root() / "pyproject.toml").read_text())
    packages = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert "migrations" in packages
    for needed in (*packages, "pyproject.toml", "uv.lock", "README.md"):
        assert needed in copied, needed


def test_no_frontend_is_fetched_from_a_registry() -> None:
    first = (repo_root() / "deploy" / "Dockerfile").read_text().splitlines()[0]
    assert not first.lower().startswith("# syntax="), first


def test_the_test_stage_has_the_dev_dependencies_and_just(instructions: list[str]) -> None:
    test = stages(instructions)["test"]
    # just from PyPI, pinned: Debian packages it only from release 13 on.
    assert any(line.startswith("RUN pip install") and '"rust-just==${JUST_VERSION}"' in line for line in test)
    # redis-server and PostgreSQL's server binaries for the tests that start private servers (the soak).
    assert any("apt-get install" in line and "redis-server postgresql" in line for line in test)
    assert any(line == "RUN uv sync --frozen" for line in test)
    assert 'CMD ["just", "test"]' in test


def test_the_runtime_code_is_root_s_and_carries_no_lab_nor_test_tools(instructions: list[str]) -> None:
    # Checked in a built image too: deploy/smoke.py (just compose-smoke) tries to write and import them.
    runtime, build = stages(instructions)["runtime"], stages(instructions)["build"]
    assert [line for line in runtime if line.startswith("COPY")] == [
        "COPY --from=build /app/.venv /app/.venv"
    ]
    copied = {source for line in build if line.startswith("COPY ") for source in line.split()[1:-1]}
    assert not copied & {"lab", "tests", "."}, copied
    pyproject = tomllib.loads((repo_root() / "pyproject.toml").read_text())
    assert "lab" not in pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    runtime_dependencies = {
        re.split(r"[\[<>=]", dependency)[0] for dependency in pyproject["project"]["dependencies"]
    }
    assert not runtime_dependencies & {"aiosmtpd", "pytest", "cryptography"}, runtime_dependencies
