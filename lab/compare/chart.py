"""The lab's PNG: latency per strategy, and lost / phantom / duplicates per scenario."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: this runs in terminals and CI

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from lab.compare.experiment import CellResult


def _latency_panel(axes: Axes, results: list[CellResult]) -> None:
    labels: list[str] = []
    samples: list[list[float]] = []
    for result in results:
        if result.cell.scenario.key == "normal" and result.outcome.latency.samples:
            labels.append(result.cell.strategy.label)
            samples.append([max(s, 1e-3) for s in result.outcome.latency.samples])
    if samples:
        axes.boxplot(samples, vert=False, whis=(1, 99))
        axes.set_yticks(range(1, len(labels) + 1), labels)
        axes.set_xscale("log")
    axes.set_xlabel("commit → email received (s, log scale)")
    axes.set_title("Latency, normal scenario (box 25-75 %, whiskers 1-99 %)")


def _count_panel(axes: Axes, results: list[CellResult], metric: str) -> None:
    scenarios = list(dict.fromkeys(r.cell.scenario.label for r in results))
    strategies = list(dict.fromkeys(r.cell.strategy.label for r in results))
    width = 0.8 / max(1, len(strategies))
    for i, strategy in enumerate(strategies):
        values = {
            r.cell.scenario.label: getattr(r.outcome, metric)
            for r in results
            if r.cell.strategy.label == strategy
        }
        xs = [s + i * width for s in range(len(scenarios)) if scenarios[s] in values]
        axes.bar(xs, [values[s] for s in scenarios if s in values], width, label=strategy)
    axes.set_xticks([s + 0.4 - width / 2 for s in range(len(scenarios))], scenarios, rotation=15, fontsize=8)
    axes.set_ylim(bottom=0, top=max(1, axes.get_ylim()[1]))
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(f"{metric} (signups)")


def write_chart(results: list[CellResult], path: Path) -> None:
    """Four panels: latency, lost, phantom, duplicates."""
    figure, grid = plt.subplots(2, 2, figsize=(14, 9))
    _latency_panel(grid[0][0], results)
    for axes, metric in zip(
        (grid[0][1], grid[1][0], grid[1][1]), ("lost", "phantom", "duplicates"), strict=True
    ):
        _count_panel(axes, results, metric)
    grid[0][1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
