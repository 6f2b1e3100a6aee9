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
    """The message names a user the database does not show (yet): the course's race, retried here."""
