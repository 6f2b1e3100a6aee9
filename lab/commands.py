"""The lab's commands of the ``signup`` console script: ``signup lab``, ``signup bench``, ``signup soak``.

pyproject.toml registers each function here in the ``signup.commands`` entry-point group, which
``signup_cli.main`` reads: the product's console script names none of the lab's modules, and the runtime
image, which has no ``lab/``, says in one line that these commands run from a checkout. Each function adds
its command's options to ``parser`` and returns the ``"module:function"`` that runs it (imported only then);
its docstring's first line is the command's help.
"""

from __future__ import annotations

import argparse


def lab(parser: argparse.ArgumentParser) -> str:
    """the outbox against other ways of sending the email, under faults"""
    _quick_and_out_dir(parser)
    return "lab.compare.cli:run"


def bench(parser: argparse.ArgumentParser) -> str:
    """latency, API cost, relay drain, claim cost, worker throughput, peer"""
    _quick_and_out_dir(parser)
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated parts: latency, api, tracing, relay, overload, idle, reconcile, peer, brokers, "
        "console, slow (default: all)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0,
        help="signups/s of sections 1 and 8 (2 and 7 at half; default: 60%% of the measured hashing rate)",
    )
    parser.add_argument(
        "--reconcile-rows",
        type=int,
        default=0,
        help="outbox rows in the reconcile and console sections (default: 1,000,000; 20,000 with --quick)",
    )
    return "lab.bench.cli:run"


def soak(parser: argparse.ArgumentParser) -> str:
    """signups under faults (kills, restarts, SMTP 451s), then a verdict"""
    # Unset options keep lab/soak/plan.py's defaults (10,000 signups at 3/s).
    parser.add_argument("--signups", type=int)
    parser.add_argument("--rate", type=float, help="signups per second")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--resend-share", type=float, help="share of new users who then ask for new emails (0 for none)"
    )
    parser.add_argument(
        "--resend-min-interval-s", type=int, help="the API's RESEND_MIN_INTERVAL_S during the soak"
    )
    parser.add_argument("--resend-max-per-day", type=int, help="the API's RESEND_MAX_PER_DAY during the soak")
    parser.add_argument("--out", default="docs/RELIABILITY.md", help="the report ('' for none)")
    return "lab.soak.cli:run"


def _quick_and_out_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a short run (under 2 minutes)")
    parser.add_argument("--out-dir", default="docs", help="where reports are written")
