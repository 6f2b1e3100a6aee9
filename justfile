# signup-outbox: `just` lists the recipes.

set dotenv-load := false

# List the recipes
default:
    @just --list

# Install the locked dependencies into .venv
sync:
    uv sync --frozen

# Run the whole test suite (unit, integration, e2e) against real PostgreSQL, Redis and SMTP
test *ARGS: sync
    uv run pytest {{ARGS}}

# Only the tests that need no servers
test-unit: sync
    uv run pytest tests/unit

# ruff (lint and format check) and mypy
lint: sync
    uv run ruff check .
    uv run ruff format --check .
    uv run mypy

# Format and autofix
fmt: sync
    uv run ruff format .
    uv run ruff check --fix .

# Create the database if missing and upgrade it to head
migrate: sync
    uv run signup migrate

# Serve the HTTP API on API_HOST:API_PORT
api: sync
    uv run signup api

# Run the outbox relay
relay: sync
    uv run signup relay

# Run the email worker
worker: sync
    uv run signup worker

# A development SMTP server that prints and stores what it receives
mailsink: sync
    uv run signup mailsink

# Migrate, then api + relay + worker + mailsink in the foreground (Ctrl-C stops all)
dev: sync
    uv run signup dev

# Build and start the compose stack as project `signup-smoke`, sign up, verify through Mailpit, stop, remove
compose-smoke:
    python3 deploy/smoke.py

# The strategy comparison (course vs outbox); `just lab --quick` for a short run
lab *ARGS: sync
    uv run signup lab {{ARGS}}

# The benchmarks; `just bench --quick` for a short run
bench *ARGS: sync
    uv run signup bench {{ARGS}}

# 10,000 signups under faults (kills, Redis and PostgreSQL restarts, SMTP 451s); writes docs/RELIABILITY.md
soak *ARGS: sync
    uv run signup soak {{ARGS}}

# A signup's timeline from the database
trace USERNAME: sync
    uv run signup trace {{USERNAME}}

# Check Prometheus's config and alert rules and test each rule on synthetic series (needs promtool)
alerts:
    promtool check config deploy/prometheus/prometheus.yml
    promtool check rules deploy/prometheus/alerts.yml
    promtool test rules deploy/prometheus/alerts.test.yml
