"""Smoke test of the compose stack, run the way a user runs it: ``just compose-smoke``.

Builds and starts docker-compose.yml as a project of its own (``signup-smoke``, on free host ports and
with fresh random PostgreSQL and Redis passwords, so a stack you run is left alone), waits for the api to be
healthy, checks that the runtime image's code is root's and holds no lab nor test tools and that PostgreSQL
and Redis refuse a wrong password, signs one person up over HTTP, reads the verification email through
Mailpit's HTTP API, opens its link, finds the signup's request id in the api, relay and worker logs, checks
that ``stop`` takes under 30 s and every service exits 0, then removes the project with its volumes.
Prints each step's time; exits 1 naming the step that failed. Needs only Python's standard library, a
Docker engine and ``docker compose`` (v2) or ``docker-compose`` (v1).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "signup-smoke"
STOP_WITHIN_S = 30.0
# One line per hop of a signup at LOG_LEVEL=info, each carrying its request id (DESIGN §9).
HOPS = {"api": "request", "relay": "relay.event_published", "worker": "verification email sent"}
LINK = re.compile(r"http://\S+/v1/verify_email\?email_id=\d+&secret_code=[A-Za-z0-9_-]+")
T = TypeVar("T")
# Run in the api container as its own user: what the image lets that user write, and what it should not hold.
IMAGE_CHECK = """
import importlib.util, json, os, subprocess, sys, sysconfig
site = sysconfig.get_paths()["purelib"]
bench = subprocess.run(["signup", "bench"], capture_output=True, text=True, timeout=60)
paths = [sys.prefix, site, *(os.path.join(site, p) for p in ("services", "shared", "signup_cli"))]
print(json.dumps({
    "uid": os.getuid(),
    "owners": sorted({os.stat(p).st_uid for p in paths}),
    "writable": [p for p in paths if os.access(p, os.W_OK)],
    "present": [m for m in ("lab", "tests", "aiosmtpd", "pytest") if importlib.util.find_spec(m)],
    "bench": [bench.returncode, bench.stderr.strip()],
}))
"""
# Run in the api container: a neighbour on the compose network without the passwords is refused by both.
WRONG_PASSWORDS = """
import asyncio, asyncpg, redis
async def postgres():
    try:
        await asyncpg.connect(host="postgres", user="postgres", password="wrong", database="signup")
    except asyncpg.InvalidPasswordError:
        return "refused"
    return "accepted"
def without_password():
    try:
        redis.Redis(host="redis", socket_timeout=5).ping()
    except redis.AuthenticationError:
        return "refused"
    return "accepted"
print(asyncio.run(postgres()), without_password())
"""


class SmokeFailed(Exception):
    """A step did not hold."""


def compose_command() -> list[str]:
    """``docker compose`` where the v2 plugin exists, else ``docker-compose``; raises ``SmokeFailed``."""
    if shutil.which("docker") and _quiet(["docker", "compose", "version"]):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise SmokeFailed("neither `docker compose` nor `docker-compose` is installed")


def _quiet(command: list[str]) -> bool:
    return subprocess.run(command, capture_output=True, check=False).returncode == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Stack:
    """The compose project under test, with its own host ports."""

    def __init__(self) -> None:
        self.compose = [*compose_command(), "--project-name", PROJECT]
        self.api_port, self.mail_port = free_port(), free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.mailpit = f"http://127.0.0.1:{self.mail_port}"
        # Settings exported in this shell (say, for `just dev`) would override the stack's own defaults.
        used = set(re.findall(r"\$\{(\w+)", (ROOT / "docker-compose.yml").read_text()))
        self.env = {name: value for name, value in os.environ.items() if name not in used}
        self.env |= {
            "API_PORT": str(self.api_port),
            "MAILPIT_UI_PORT": str(self.mail_port),
            "PUBLIC_BASE_URL": self.api,
            # URL-safe, as .env.example asks: every service must follow these, not compose's defaults.
            "POSTGRES_PASSWORD": secrets.token_urlsafe(18),
            "REDIS_PASSWORD": secrets.token_urlsafe(18),
        }

    def run(self, *args: str, timeout: float = 900) -> str:
        """Run one compose command; its stdout. Raises ``SmokeFailed`` with its output if it fails."""
        done = subprocess.run(
            [*self.compose, *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise SmokeFailed(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done.stdout

    def container(self, service: str) -> dict[str, Any]:
        """``docker inspect`` of the service's container."""
        [container_id] = self.run("ps", "-q", service).split()
        inspected: list[dict[str, Any]] = json.loads(
            subprocess.run(["docker", "inspect", container_id], capture_output=True, check=True).stdout
        )
        return inspected[0]

    def log_lines(self, service: str) -> Iterator[dict[str, Any]]:
        """The JSON lines the service logged, without compose's ``name | `` prefix."""
        for line in self.run("logs", "--no-color", service).splitlines():
            start = line.find("{")
            if start >= 0:
                try:
                    yield json.loads(line[start:])
                except json.JSONDecodeError:
                    continue


def poll(probe: Callable[[], T | None], *, within_s: float, what: str) -> T:
    """``probe()``'s first truthy result, asked every half second; raises ``SmokeFailed`` at the deadline."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            result = probe()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise SmokeFailed(f"no {what} within {within_s:.0f} s")
        time.sleep(0.5)


def http(method: str, url: str, body: dict[str, str] | None = None, **headers: str) -> Any:
    """The JSON answer to one request; raises ``urllib.error.HTTPError`` (an ``OSError``) on a 4xx or 5xx."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(  # noqa: S310 (http:// URLs of this stack only)
        url, data=data, method=method, headers={"content-type": "application/json", **headers}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.load(response)


@contextmanager
def step(name: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    print(f"  ok  {name} ({time.monotonic() - started:.1f} s)", flush=True)


def smoke(stack: Stack) -> None:
    """Every step of the module's docstring in order; raises ``SmokeFailed`` at the first that fails."""
    # A person whose name and address are not ASCII: the worker sends to the domain's IDNA form.
    request_id, email, delivered_to = (
        f"smoke-{uuid.uuid4().hex[:12]}",
        "anna@bücher.de",
        "anna@xn--bcher-kva.de",
    )
    with step("up --build -d"):
        stack.run("up", "--build", "-d")
    with step("api healthy"):
        poll(
            lambda: stack.container("api")["State"]["Health"]["Status"] == "healthy",
            within_s=180,
            what="healthy api",
        )
    with step("the runtime image: root's code, read-only to the app user; no lab nor test tools"):
        # `signup bench` is registered there (pyproject.toml's entry points) but says it runs from a checkout.
        found = json.loads(stack.run("exec", "-T", "api", "python", "-c", IMAGE_CHECK))
        says_checkout = found["bench"][0] == 2 and "run from a checkout" in found["bench"][1]
        if (
            found["uid"] == 0
            or found["owners"] != [0]
            or found["writable"]
            or found["present"]
            or not says_checkout
        ):
            raise SmokeFailed(f"the runtime image is not as it should be: {found}")
    with step("PostgreSQL and Redis refuse a client without their passwords"):
        if (answers := stack.run("exec", "-T", "api", "python", "-c", WRONG_PASSWORDS).split()) != [
            "refused",
            "refused",
        ]:
            raise SmokeFailed(f"PostgreSQL, Redis without the password: {answers}")
    with step("sign up over HTTP (full name in Cyrillic, an internationalised domain)"):
        body = {"username": "anna", "full_name": "Анна Каренина", "email": email, "password": "correct horse"}
        http("POST", f"{stack.api}/v1/create_user", body, **{"X-Request-ID": request_id})
    with step("the email in Mailpit, its link verifies"):
        summary = poll(
            lambda: _mail_to(stack, delivered_to), within_s=60, what=f"email to {delivered_to} in Mailpit"
        )
        text = http("GET", f"{stack.mailpit}/api/v1/message/{summary['ID']}")["Text"]
        link = LINK.search(text)
        if link is None:
            raise SmokeFailed(f"no verification link in the email: {text!r}")
        if (answer := http("GET", link.group(0))) != {"is_verified": True}:
            raise SmokeFailed(f"the link answered {answer}")
    with step(f"request id {request_id} in the api, relay and worker logs"):
        for service, event in HOPS.items():
            probe = lambda s=service, e=event: _logged(stack, s, e, request_id)  # noqa: E731
            poll(probe, within_s=10, what=f"{event} in {service}")
    with step(f"stop within {STOP_WITHIN_S:.0f} s"):
        started = time.monotonic()
        stack.run("stop")
        if (took := time.monotonic() - started) > STOP_WITHIN_S:
            raise SmokeFailed(f"stop took {took:.1f} s")
        codes = {name: stack.container(name)["State"]["ExitCode"] for name in HOPS}
        print(f"      stopped in {took:.1f} s; exit codes {codes}")
        if any(codes.values()):
            raise SmokeFailed(f"a service did not exit 0 on SIGTERM: {codes}")


def _mail_to(stack: Stack, address: str) -> dict[str, Any] | None:
    messages = http("GET", f"{stack.mailpit}/api/v1/messages")["messages"]
    return next((m for m in messages if address in (to["Address"] for to in m["To"])), None)


def _logged(stack: Stack, service: str, event: str, request_id: str) -> bool:
    return any(
        line.get("request_id") == request_id and line.get("event") == event
        for line in stack.log_lines(service)
    )


def main() -> int:
    started = time.monotonic()
    try:
        stack = Stack()
        if not _quiet(["docker", "info"]):
            raise SmokeFailed("no Docker engine answers `docker info`")
    except SmokeFailed as exc:
        print(f"compose smoke test: {exc}", file=sys.stderr)
        return 1
    print(f"compose smoke test: {' '.join(stack.compose)}, api on :{stack.api_port}", flush=True)
    try:
        stack.run("down", "-v", "--remove-orphans")  # what an interrupted run left behind
        smoke(stack)
    except SmokeFailed as exc:
        print(f"FAILED: {exc}\n--- the stack's last log lines:", file=sys.stderr)
        print(stack.run("logs", "--no-color", "--tail", "40"), file=sys.stderr)
        return 1
    finally:
        with step("down -v"):
            stack.run("down", "-v", "--remove-orphans")
    print(f"compose smoke test passed in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
