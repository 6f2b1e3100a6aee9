"""``signup``: the one console script (DESIGN §8). Each subcommand loads the settings once, then runs.

A subcommand's code is imported only when it runs, so ``signup migrate`` does not import Dramatiq. A bad
value of a setting the command reads stops it with the same one-line error (``signup api``, ``relay``,
``worker`` and ``migrate`` read only their own: ``shared.settings.READS``; the rest read them all).
Commands of the product are in ``COMMANDS``; others, the lab's, register in the ``signup.commands``
entry-point group (pyproject.toml, lab/commands.py).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from shared.settings import READS, Settings, SettingsError, SettingsWarning, load_settings
from signup_cli.supervise import stop_with_supervisor

# The entry-point group where other packages (the lab) register commands: lab/commands.py says how.
COMMAND_GROUP = "signup.commands"
# subcommand → "module:function"; the function takes (settings, args) and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "migrate": ("signup_cli.commands:migrate", "create the database if missing and upgrade it to head"),
    "api": ("services.api.main:run", "serve the HTTP API"),
    "relay": ("services.relay.main:run", "move committed outbox rows to Redis"),
    "worker": ("services.worker.main:run", "send verification emails (Dramatiq worker)"),
    "mailsink": ("services.worker.mailsink:run", "a development SMTP server that prints and stores mail"),
    "dev": ("signup_cli.dev:run", "migrate, then api + relay + worker + mailsink in the foreground"),
    "dlq": ("signup_cli.dlq:run", "list, replay or discard dead-lettered messages"),
    "trace": ("signup_cli.trace:run", "a signup's timeline from the database"),
}


def build_parser() -> argparse.ArgumentParser:
    return _build()[0]


def targets() -> dict[str, str | None]:
    """Every command's ``"module:function"`` (None: its code is not installed here), by name."""
    return {name: parser.get_default("target") for name, parser in _build()[1].items()}


def _build() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="signup", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {name: commands.add_parser(name, help=help_) for name, (_, help_) in COMMANDS.items()}
    for name, (target, _) in COMMANDS.items():
        parsers[name].set_defaults(target=target)

    parsers["migrate"].add_argument("--revision", default="head", help="target revision (default: head)")
    parsers["migrate"].add_argument("--downgrade", action="store_true", help="downgrade to --revision")

    parsers["mailsink"].add_argument("--host", default="127.0.0.1")
    parsers["mailsink"].add_argument("--port", type=int, default=None, help="default: SMTP_PORT")
    parsers["mailsink"].add_argument("--out-dir", default="var/mail", help="where .eml files are stored")

    dlq = parsers["dlq"].add_subparsers(dest="dlq_command", required=True)
    dlq.add_parser("list", help="list dead-lettered messages")
    replay = dlq.add_parser("replay", help="requeue dead-lettered messages to their original queue")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("message_id", nargs="?", help="the message id to replay")
    which.add_argument("--all", action="store_true", help="replay every dead-lettered message")
    discard = dlq.add_parser("discard", help="drop a dead-lettered message for good")
    discard.add_argument("message_id", help="the message id to drop")

    parsers["trace"].add_argument("username")

    for entry in entry_points(group=COMMAND_GROUP):
        if entry.name in parsers:
            raise RuntimeError(f"{entry.value} registers signup {entry.name}, a command of the product")
        try:
            add_options: Callable[[argparse.ArgumentParser], str] = entry.load()
        except ModuleNotFoundError as exc:  # the runtime image has no lab/
            command = commands.add_parser(entry.name, help="runs from a checkout", add_help=False)
            command.set_defaults(target=None, missing=exc.name)
            parsers[entry.name] = command
            continue
        command = commands.add_parser(entry.name, help=(add_options.__doc__ or "").strip().splitlines()[0])
        command.set_defaults(target=add_options(command))
        parsers[entry.name] = command
    return parser, parsers


def resolve(target: str) -> Callable[[Settings, argparse.Namespace], int]:
    """The function a ``"module:function"`` target names, its module imported now."""
    module_name, function_name = target.split(":")
    command: Callable[[Settings, argparse.Namespace], int] = getattr(
        importlib.import_module(module_name), function_name
    )
    return command


def main(argv: Sequence[str] | None = None) -> int:
    stop_with_supervisor()
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.target is not None:  # a command that is not here takes any options, unread
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        with warnings.catch_warnings(record=True, action="always", category=SettingsWarning) as ignored:
            settings = load_settings(process=args.command if args.command in READS else None)
    except SettingsError as exc:
        print(f"signup: invalid configuration: {exc}", file=sys.stderr)
        return 2
    for warning in ignored:
        print(f"signup: ignored: {warning.message}", file=sys.stderr)
    try:
        if args.target is None:
            raise ModuleNotFoundError(name=args.missing)
        command = resolve(args.target)
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
