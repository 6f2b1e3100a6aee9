"""``signup``: the one console script (DESIGN §8). Each subcommand loads the settings once, then runs.

A subcommand's code is imported only when it runs, so ``signup migrate`` does not import Dramatiq and a
bad setting stops every command with the same one-line error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from shared.settings import Settings, SettingsError, load_settings
from signup_cli.supervise import stop_with_supervisor

# subcommand → "module:function"; the function takes (settings, args) and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "migrate": ("signup_cli.commands:migrate", "create the database if missing and upgrade it to head"),
    "api": ("services.api.main:run", "serve the HTTP API"),
    "relay": ("services.relay.main:run", "move committed outbox rows to Redis"),
    "worker": ("services.worker.main:run", "send verification emails (Dramatiq worker)"),
    "mailsink": ("services.worker.mailsink:run", "a development SMTP server that prints and stores mail"),
    "dev": ("signup_cli.dev:run", "migrate, then api + relay + worker + mailsink in the foreground"),
    "lab": ("lab.compare.cli:run", "the outbox against other ways of sending the email, under faults"),
    "bench": ("lab.bench.cli:run", "latency, API cost, relay drain, claim cost, worker throughput, peer"),
    "soak": ("lab.soak.cli:run", "signups under faults (kills, restarts, SMTP 451s), then a verdict"),
    "dlq": ("signup_cli.dlq:run", "list, replay or discard dead-lettered messages"),
    "trace": ("signup_cli.trace:run", "a signup's timeline from the database"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signup", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {name: commands.add_parser(name, help=help_) for name, (_, help_) in COMMANDS.items()}

    parsers["migrate"].add_argument("--revision", default="head", help="target revision (default: head)")
    parsers["migrate"].add_argument("--downgrade", action="store_true", help="downgrade to --revision")

    parsers["mailsink"].add_argument("--host", default="127.0.0.1")
    parsers["mailsink"].add_argument("--port", type=int, default=None, help="default: SMTP_PORT")
    parsers["mailsink"].add_argument("--out-dir", default="var/mail", help="where .eml files are stored")

    for name in ("lab", "bench"):
        parsers[name].add_argument("--quick", action="store_true", help="a short run (under 2 minutes)")
        parsers[name].add_argument("--out-dir", default="docs", help="where reports are written")
    parsers["bench"].add_argument(
        "--only",
        default="",
        help="comma-separated parts: latency, api, tracing, relay, overload, idle, reconcile, peer, brokers, "
        "console, slow (default: all)",
    )
    parsers["bench"].add_argument(
        "--rate",
        type=float,
        default=0,
        help="signups/s of sections 1 and 8 (2 and 7 at half; default: 60%% of the measured hashing rate)",
    )
    parsers["bench"].add_argument(
        "--reconcile-rows",
        type=int,
        default=0,
        help="outbox rows in the reconcile and console sections (default: 1,000,000; 20,000 with --quick)",
    )

    dlq = parsers["dlq"].add_subparsers(dest="dlq_command", required=True)
    dlq.add_parser("list", help="list dead-lettered messages")
    replay = dlq.add_parser("replay", help="requeue dead-lettered messages to their original queue")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("message_id", nargs="?", help="the message id to replay")
    which.add_argument("--all", action="store_true", help="replay every dead-lettered message")
    discard = dlq.add_parser("discard", help="drop a dead-lettered message for good")
    discard.add_argument("message_id", help="the message id to drop")

    # Unset options keep lab/soak/plan.py's defaults (10,000 signups at 3/s).
    parsers["soak"].add_argument("--signups", type=int)
    parsers["soak"].add_argument("--rate", type=float, help="signups per second")
    parsers["soak"].add_argument("--seed", type=int)
    parsers["soak"].add_argument(
        "--resend-share", type=float, help="share of new users who then ask for new emails (0 for none)"
    )
    parsers["soak"].add_argument(
        "--resend-min-interval-s", type=int, help="the API's RESEND_MIN_INTERVAL_S during the soak"
    )
    parsers["soak"].add_argument(
        "--resend-max-per-day", type=int, help="the API's RESEND_MAX_PER_DAY during the soak"
    )
    parsers["soak"].add_argument("--out", default="docs/RELIABILITY.md", help="the report ('' for none)")

    parsers["trace"].add_argument("username")
    return parser


def resolve(target: str) -> Callable[[Settings, argparse.Namespace], int]:
    """The function a ``"module:function"`` target names, its module imported now."""
    module_name, function_name = target.split(":")
    command: Callable[[Settings, argparse.Namespace], int] = getattr(
        importlib.import_module(module_name), function_name
    )
    return command


def main(argv: Sequence[str] | None = None) -> int:
    stop_with_supervisor()
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"signup: invalid configuration: {exc}", file=sys.stderr)
        return 2
    try:
        command = resolve(COMMANDS[args.command][0])
    except ModuleNotFoundError as exc:
        missing = (exc.name or "a module").partition(".")[0]
        # The runtime image carries the services only: lab/ and the development tools stay in the checkout.
        print(
            f"signup {args.command}: needs {missing}, which is not installed here "
            f"(lab, bench, soak, mailsink and dev run from a checkout: uv run signup {args.command})",
            file=sys.stderr,
        )
        return 2
    return command(settings, args)


if __name__ == "__main__":
    sys.exit(main())
