"""The one message this system sends, and where it goes (DESIGN §4)."""

from __future__ import annotations

import msgspec

SEND_VERIFY_EMAIL_ACTOR = "send_verify_email"
SEND_VERIFY_EMAIL_QUEUE = "critical"


class SendVerifyEmail(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Command: send the verification email to this user. The message's only argument."""

    username: str
