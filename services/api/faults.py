"""Fault injection for the lab: a slow commit and a random rollback, both off by default (DESIGN §5)."""

from __future__ import annotations

import asyncio
import random


class InjectedRollback(Exception):
    """``FAULT_ROLLBACK_RATIO`` chose this signup's transaction to roll back (an experiment, not a bug)."""


class Faults:
    """The fault-injection points of DESIGN §5, both off by default."""

    def __init__(self, *, commit_delay_ms: int = 0, rollback_ratio: float = 0.0) -> None:
        self.commit_delay_ms = commit_delay_ms
        self.rollback_ratio = rollback_ratio

    async def before_commit(self) -> None:
        if self.commit_delay_ms:
            await asyncio.sleep(self.commit_delay_ms / 1000)
        if self.rollback_ratio and random.random() < self.rollback_ratio:
            raise InjectedRollback("injected rollback after dispatch")
