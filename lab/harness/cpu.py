"""Where the CPU went during a measurement: a stack's parts, the load generator and the rest of the machine.

``cpu_snapshot(stack)`` reads cumulative CPU seconds (user + system) from ``/proc``; the difference of two
snapshots, divided by the window and the cores, is each part's share of the machine:

- ``api loop``: the API's main thread (uvicorn's event loop: HTTP, routing, parsing, SQL, logging);
- ``api hashing``: the API's other threads, living or ended (the argon2id pool and argon2's lane threads);
- ``relay``, ``worker``: their process groups (the worker's forked processes included);
- ``redis``: the stack's private redis-server;
- ``postgres``: the PostgreSQL backends connected to the stack's database (shared server processes such as
  the WAL writer and the checkpointer are in ``rest``);
- ``generator``: this process's main thread (the benchmark's event loop, which sends the load);
- ``bench other``: this process's other threads (the SMTP sink);
- ``rest``: every other busy second of the machine (other users of it included).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from lab.harness.processes import proc_stats
from lab.harness.stack import Stack

PARTS = (
    "api loop",
    "api hashing",
    "relay",
    "worker",
    "redis",
    "postgres",
    "generator",
    "bench other",
    "rest",
)
_TICK = os.sysconf("SC_CLK_TCK")


def _seconds(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / _TICK


def _stat(path: Path) -> list[str] | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _process_and_main_thread(pid: int | None) -> tuple[float, float]:
    if pid is None:
        return 0.0, 0.0
    whole = _stat(Path(f"/proc/{pid}/stat"))
    main = _stat(Path(f"/proc/{pid}/task/{pid}/stat"))
    return (_seconds(whole) if whole else 0.0), (_seconds(main) if main else 0.0)


def _machine_busy() -> float:
    # /proc/stat's first line: user nice system idle iowait irq softirq steal … in ticks.
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICK


def _postgres_backends(database: str) -> float:
    total = 0.0
    for pid, fields in proc_stats().items():
        if fields[0] == "Z":
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"postgres: ") and f" {database} ".encode() in cmdline:
            total += _seconds(fields)
    return total


def cpu_snapshot(stack: Stack) -> dict[str, float]:
    """Cumulative CPU seconds of each of ``PARTS`` now (compare two with ``cpu_shares``)."""
    stats = proc_stats()
    groups = {name: service.pid for name, service in stack.services.items()}

    def group(name: str) -> float:
        pgid = groups.get(name)
        return sum(_seconds(f) for f in stats.values() if pgid is not None and int(f[2]) == pgid)

    api, api_main = _process_and_main_thread(groups.get("api"))
    me, my_main = _process_and_main_thread(os.getpid())
    assert threading.main_thread().native_id == os.getpid()  # the generator's loop runs in the main thread
    redis = stats.get(stack.redis.pid or -1)
    parts = {
        "api loop": api_main,
        "api hashing": api - api_main,
        "relay": group("relay"),
        "worker": group("worker"),
        "redis": _seconds(redis) if redis else 0.0,
        "postgres": _postgres_backends(stack.db_name),
        "generator": my_main,
        "bench other": me - my_main,
    }
    parts["rest"] = _machine_busy() - sum(parts.values())
    return parts


def cpu_shares(before: dict[str, float], after: dict[str, float], window_s: float) -> dict[str, float]:
    """Each part's share of all the machine's cores over ``window_s`` (1.0: every core busy all along)."""
    capacity = window_s * (os.cpu_count() or 1)
    return {part: max(0.0, after[part] - before[part]) / capacity for part in PARTS}
