"""``python -m lab.strategies api|worker``: the product's API or worker, with the knobs the environment sets.

The settings are the product's (``load_settings``); the knobs (``knobs.py``) reach the product only through
the seams of ``create_app`` and ``build_broker``. With no knob set, the process is ``signup api`` or
``signup worker`` itself.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from litestar import Litestar

from lab.strategies.dispatchers import build_dispatcher
from lab.strategies.faults import ROLLBACK_HANDLERS, SKIP_RETRY_HANDLERS, Faults
from lab.strategies.knobs import Knobs, load_knobs
from shared.settings import Settings, SettingsError, load_settings


def api_factory(knobs: Knobs) -> Callable[[Settings], Litestar]:
    """``create_app`` with the dispatcher and faults ``knobs`` ask for."""
    from services.api.app import create_app

    faults = Faults(commit_delay_ms=knobs.fault_commit_delay_ms, rollback_ratio=knobs.fault_rollback_ratio)

    def build_app(settings: Settings) -> Litestar:
        return create_app(
            settings,
            dispatcher=build_dispatcher(settings, knobs),
            before_commit=faults.before_commit,
            exception_handlers=ROLLBACK_HANDLERS,
        )

    return build_app


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in (["api"], ["worker"]):
        print("usage: python -m lab.strategies api|worker", file=sys.stderr)
        return 2
    try:
        settings, knobs = load_settings(process=args[0]), load_knobs()
    except SettingsError as exc:
        print(f"lab.strategies: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args == ["api"]:
        from services.api import main as api

        return api.run(settings, build_app=api_factory(knobs))
    from services.worker import main as worker

    return worker.run(
        settings, handlers=SKIP_RETRY_HANDLERS if knobs.worker_skip_retry_missing_user else None
    )
