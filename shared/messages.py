"""Every message the outbox carries: a typed struct that names its actor, queue and handler once.

A message is a command to a worker. Adding one is a subclass of ``Message`` here (or in any module imported
before the worker is built) and one handler function: ``add_outbox_event`` writes it, the relay publishes it
by the actor and queue on its row, and the worker declares an actor for every registered class and consumes
exactly their queues. Nothing else learns its name (cosmicpython's ``COMMAND_HANDLERS``, as a class
registry).
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

_REGISTRY: dict[str, type[Message]] = {}


class Message(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Base of every message: the struct's fields are the payload, the class variables say where it goes.

    ``actor`` is the Dramatiq actor name (unique), ``queue`` the Dramatiq queue, ``handler`` the
    ``"module:function"`` the worker imports and calls as ``await handler(message, context=...,
    message_id=..., connection=...)`` (``services.worker.handlers``); it is a string so that the API,
    which writes messages, never imports the worker's code.
    """

    actor: ClassVar[str]
    queue: ClassVar[str]
    handler: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        known = _REGISTRY.get(cls.actor)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise TypeError(f"actor {cls.actor!r} is already {known.__qualname__}")
        _REGISTRY[cls.actor] = cls


def registered() -> list[type[Message]]:
    """Every message class defined so far, in the order they were defined."""
    return list(_REGISTRY.values())


class SendVerifyEmail(Message, frozen=True):
    """Send this user an email with a new single-use link that verifies their address."""

    actor: ClassVar[str] = "send_verify_email"
    queue: ClassVar[str] = "critical"
    handler: ClassVar[str] = "services.worker.handlers:send_verify_email"

    username: str


class SendSignupNotice(Message, frozen=True, omit_defaults=True):
    """Tell this user that someone tried to open an account with their address (nothing else is stored).

    ``language`` is the one chosen for the signup that met the address, the one thing it leaves behind;
    left out of the payload when it is English, which is what a payload without it means.
    """

    actor: ClassVar[str] = "send_signup_notice"
    queue: ClassVar[str] = "critical"
    handler: ClassVar[str] = "services.worker.handlers:send_signup_notice"

    username: str
    language: str = "en"
