"""What the lab compares: dispatch strategies x fault scenarios, and how long and hard each cell runs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Strategy:
    """One way of handing the "send the verification email" command on, with the worker it runs against."""

    key: str
    label: str
    dispatch: str
    """``DISPATCH_STRATEGY``."""
    delay_ms: int | None = None
    """``TASK_PROCESS_IN_MS`` (``fixed_delay`` only)."""
    skip_retry: bool = False
    """``WORKER_SKIP_RETRY_MISSING_USER``: the course's first version drops a task whose user is missing."""

    @property
    def services(self) -> tuple[str, ...]:
        return ("api", "relay", "worker") if self.dispatch == "outbox" else ("api", "worker")

    def env(self) -> dict[str, str]:
        env = {"WORKER_SKIP_RETRY_MISSING_USER": str(self.skip_retry).lower()}
        if self.delay_ms is not None:
            env["TASK_PROCESS_IN_MS"] = str(self.delay_ms)
        return env


@dataclass(frozen=True)
class Scenario:
    """A fault the cell injects: through settings, or by acting on the stack while the load runs."""

    key: str
    label: str
    env: dict[str, str] = field(default_factory=dict)
    redis_down_s: float = 0.0
    """Stop Redis this long, starting at ``fault_at`` of the load."""
    kill_workers: bool = False
    """SIGKILL the relay and the worker at ``fault_at`` of the load, and start them again."""
    fault_at: float = 0.3
    """When the action happens, as a share of the load's duration."""


STRATEGIES = (
    Strategy("immediate_skip", "immediate + skip-retry", "immediate", skip_retry=True),
    Strategy("fixed_1s_skip", "fixed_delay 1 s + skip-retry", "fixed_delay", delay_ms=1000, skip_retry=True),
    Strategy("fixed_10s", "fixed_delay 10 s + retries", "fixed_delay", delay_ms=10_000),
    Strategy("fixed_1s_retry", "fixed_delay 1 s + retries", "fixed_delay", delay_ms=1000),
    Strategy("outbox", "outbox", "outbox"),
)

SCENARIOS = (
    Scenario("normal", "normal"),
    Scenario("slow_commit", "slow commit (2 s)", env={"FAULT_COMMIT_DELAY_MS": "2000"}),
    Scenario("rollback", "rollback after dispatch (20 %)", env={"FAULT_ROLLBACK_RATIO": "0.2"}),
    Scenario("redis_down", "Redis down", redis_down_s=5.0),
    Scenario("kill", "relay + worker SIGKILLed", kill_workers=True, fault_at=0.5),
)

STRATEGY = {strategy.key: strategy for strategy in STRATEGIES}
SCENARIO = {scenario.key: scenario for scenario in SCENARIOS}


@dataclass(frozen=True)
class Cell:
    strategy: Strategy
    scenario: Scenario

    @property
    def key(self) -> str:
        return f"{self.strategy.key}/{self.scenario.key}"


@dataclass(frozen=True)
class Plan:
    """The cells of a run and the load each gets."""

    cells: tuple[Cell, ...]
    rate: float
    """Signups per second offered to each cell."""
    load_s: float
    settle_s: float
    """After the load, the longest a cell waits for emails before it counts what is missing as lost."""
    concurrency: int
    """How many cells run at once (each has its own database, Redis and processes)."""


# What the quick run (and its test) needs: every claim of the README's table, once.
# The longest cells first, so that the short ones fill in behind them.
QUICK_CELLS = (
    ("fixed_10s", "normal"),
    ("outbox", "redis_down"),
    ("fixed_1s_retry", "redis_down"),
    ("outbox", "normal"),
    ("immediate_skip", "slow_commit"),
)


def full_plan() -> Plan:
    cells = tuple(Cell(strategy, scenario) for scenario in SCENARIOS for strategy in STRATEGIES)
    return Plan(cells=cells, rate=2.0, load_s=15.0, settle_s=30.0, concurrency=2)


def quick_plan() -> Plan:
    cells = tuple(Cell(STRATEGY[s], SCENARIO[c]) for s, c in QUICK_CELLS)
    return Plan(cells=cells, rate=2.0, load_s=8.0, settle_s=20.0, concurrency=3)
