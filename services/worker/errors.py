"""How the worker classifies a failure: retry it with backoff, or dead-letter it at once (DESIGN §4)."""

from __future__ import annotations


class TransientError(Exception):
    """Worth retrying: the database or SMTP server is down, SMTP answered 4xx, the user is not visible yet."""


class PermanentError(Exception):
    """Retrying cannot help (a bad payload, an SMTP 5xx reject): the message goes to the dead letters now."""


class UserNotVisible(TransientError):
    """The message names a user the database does not show (yet): the course's race, retried here."""
