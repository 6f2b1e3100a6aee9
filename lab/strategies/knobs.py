"""The lab's knobs, read from the environment of a process ``python -m lab.strategies`` starts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from shared.settings import read_environment

DispatchStrategy = Literal["outbox", "fixed_delay", "immediate", "none"]


class Knobs(msgspec.Struct, frozen=True, kw_only=True):
    """Each field is named as its environment variable, lower-cased; the defaults are the product's own."""

    dispatch_strategy: DispatchStrategy = "outbox"
    """``outbox`` (the product's); ``fixed_delay``, ``immediate`` (the course's); ``none`` (bench only)."""
    task_process_in_ms: Annotated[int, Meta(ge=0)] = 10_000
    """The course's ``ProcessIn`` delay, used by ``fixed_delay``."""
    fault_commit_delay_ms: Annotated[int, Meta(ge=0)] = 0
    """Sleep after dispatch, before the commit (the course's slow-commit demonstration)."""
    fault_rollback_ratio: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.0
    """Share of signups whose transaction is rolled back after dispatch."""
    worker_skip_retry_missing_user: bool = False
    """Reproduce the course's ``SkipRetry`` when the user is not (yet) visible."""


KNOB_NAMES = tuple(name.upper() for name in Knobs.__struct_fields__)


def load_knobs(environ: Mapping[str, str] | None = None) -> Knobs:
    """The knobs set in ``environ`` (default ``os.environ``); raises ``SettingsError`` naming a bad one."""
    return Knobs(**read_environment(Knobs, os.environ if environ is None else environ))


def knobs_set(env: Mapping[str, str]) -> bool:
    """Whether ``env`` asks for anything but the product's own behaviour."""
    return load_knobs(env) != Knobs()
