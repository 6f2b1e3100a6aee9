"""The lab's results as a terminal table, a Markdown page and a JSON document."""

from __future__ import annotations

from typing import Any

from lab.compare import outcome
from lab.compare.experiment import CellResult

COLUMNS = ("accepted", "failed", "delivered", "lost", "phantom", "dup", "p50 s", "p95 s", "p99 s", "max s")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def row(result: CellResult) -> list[str]:
    """One cell's figures, as the tables show them."""
    o = result.outcome
    cut = "" if result.settled else "*"
    return [
        result.cell.strategy.label,
        result.cell.scenario.label,
        str(o.accepted),
        str(o.failed),
        f"{o.delivered}/{o.committed}",
        f"{o.lost}{cut}",
        str(o.phantom),
        str(o.duplicates),
        *(_seconds(v) for v in (o.latency.p50, o.latency.p95, o.latency.p99, o.latency.max)),
    ]


def terminal_table(results: list[CellResult]) -> str:
    rows = [["strategy", "scenario", *COLUMNS], *(row(r) for r in results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(results: list[CellResult]) -> str:
    rows = [["strategy", "scenario", *COLUMNS], *(row(r) for r in results)]
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    lines.insert(1, "|" + "---|" * len(rows[0]))
    return "\n".join(lines)


def markdown(results: list[CellResult], meta: dict[str, Any]) -> str:
    """The whole page: how it was run, the table, and what each column means."""
    plan = meta["plan"]
    definitions = (outcome.__doc__ or "").split("Definitions (the report repeats them):", 1)[-1].strip()
    return "\n\n".join(
        [
            "# Lab: the course's enqueue-before-commit vs the transactional outbox",
            f"Command: `{meta['command']}` · machine: {meta['machine']['nproc']} CPUs, "
            f"{meta['machine']['cpu']} · {meta['started_at']} · {meta['duration_s']:.0f} s in all · "
            f"load average {meta['load_average']['start'][0]:.1f} at the start, "
            f"{meta['load_average']['end'][0]:.1f} at the end.",
            f"Each cell has its own database, Redis, SMTP sink and `signup api`/`relay`/`worker` processes; "
            f"it receives {plan['rate']:g} signups/s for {plan['load_s']:g} s, then waits up to "
            f"{plan['settle_s']:g} s for the emails. Latency is commit → email received.",
            markdown_table(results),
            "`delivered` is committed users with an email / committed users. "
            "`*`: the cell was still busy at its deadline (retrying phantom messages, or messages a worker "
            "still holds unacknowledged), so what it counts as lost may arrive later.",
            "## Definitions",
            definitions,
            "![latency per strategy; lost, phantom and duplicates per scenario](lab.png)",
        ]
    )


def to_json(results: list[CellResult], meta: dict[str, Any]) -> dict[str, Any]:
    cells = [
        {
            "strategy": r.cell.strategy.key,
            "strategy_label": r.cell.strategy.label,
            "scenario": r.cell.scenario.key,
            "scenario_label": r.cell.scenario.label,
            "settled": r.settled,
            "duration_s": round(r.duration_s, 1),
            **r.outcome.to_json(),
        }
        for r in results
    ]
    return {**meta, "cells": cells}
