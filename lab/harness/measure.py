"""Measuring, the same way for the lab, the bench and the soak: latency quantiles, log lines, the machine.

There is one definition of a percentile here (nearest rank), so that "p99" means the same in every report.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

COMMITTED_FIELD = "committed"
"""The API's log line right after a signup's commit carries ``committed: true`` and the ``username``
(services/api/signup.py); its words may change, this field may not."""


@dataclass(frozen=True)
class Latency:
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None
    samples: list[float]


def percentile(sorted_values: list[float], share: float) -> float | None:
    """Nearest-rank percentile of already sorted values; ``None`` for no values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(share * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_of(samples: Iterable[float]) -> Latency:
    """p50, p95, p99 (nearest rank) and the maximum of ``samples``."""
    values = sorted(samples)
    return Latency(
        p50=percentile(values, 0.50),
        p95=percentile(values, 0.95),
        p99=percentile(values, 0.99),
        max=values[-1] if values else None,
        samples=values,
    )


def _records(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects among ``lines`` (anything else is skipped)."""
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record


def usernames_in_log(lines: Iterable[str]) -> set[str]:
    """Every ``username`` a JSON log line names."""
    return {r["username"] for r in _records(lines) if isinstance(r.get("username"), str)}


def commit_times(api_log: Iterable[str]) -> dict[str, float]:
    """username → wall-clock time of the API's post-commit log line (the one marked ``committed``)."""
    times: dict[str, float] = {}
    for record in _records(api_log):
        if record.get(COMMITTED_FIELD) is True and isinstance(record.get("username"), str):
            times[record["username"]] = datetime.fromisoformat(str(record["timestamp"])).timestamp()
    return times


def commit() -> str:
    """The checkout's commit (short), with "+ local changes" when tracked files differ from it; "unknown"
    outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + (" + local changes" if changed.stdout.strip() else "")


def machine() -> dict[str, Any]:
    """What the figures depend on: CPU count and model, Python version."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version()}
