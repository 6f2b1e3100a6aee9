"""How the worker classifies a failure: retry it with backoff, or dead-letter it at once (DESIGN §5)."""

from __future__ import annotations

from dramatiq import Retry


class TransientError(Retry):
    """Worth retrying: the database or SMTP server is down, SMTP answered 4xx, the user is not visible yet.

    A ``dramatiq.Retry``: Dramatiq retries it with the same backoff and limit as any exception, but does
    not log it as "Failed to process message … with unhandled exception" with a traceback, which it did for
    every SMTP 451 (found by the soak); FailureObserver logs each failed attempt as a warning instead.
    """


class PermanentError(Exception):
    """Retrying cannot help (a bad payload, an SMTP 5xx reject): the message goes to the dead letters now."""


class UserNotVisible(TransientError):
    """The message names a user the database does not show (yet): retried until its signup is visible."""


class SmtpDeferred(TransientError):
    """The SMTP server answered 4xx. ``reply`` is its text, which may echo the address: never in a log line
    nor in the message's ``last_error``, only masked in the attempt's record (``attempts``)."""

    def __init__(self, code: int, reply: str = "") -> None:
        super().__init__(f"SMTP deferred the message with {code}")
        self.code = code
        self.reply = reply


class SmtpRejected(PermanentError):
    """The SMTP server answered 5xx; ``reply`` as in ``SmtpDeferred``."""

    def __init__(self, code: int, reply: str = "") -> None:
        super().__init__(f"SMTP rejected the message with {code}")
        self.code = code
        self.reply = reply
