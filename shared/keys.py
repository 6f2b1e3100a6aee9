"""Server keys and verification codes (DESIGN §4, §8).

A verification code is ``HMAC-SHA-256(WORKER_CODE_SECRET, message id)`` in base64url (43 characters, 256
bits): every delivery of one message draws the same code, so a redelivery after a crash sends the very same
link, and nothing but the worker's key can make one. The database stores only its SHA-256 digest
(``verify_emails.code_sha256``): the API compares digests, and a database reader holds nothing a link
would take.

A key setting left empty gets a random key for this process alone, and a warning says what that costs: fine
for one process on a laptop, never what a deployment of several processes should run with.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
import uuid

from shared.logging import get_logger

log = get_logger()

_CODE_CONTEXT = b"signup-outbox verify_email code\x00"


@functools.cache
def server_key(value: str, *, setting: str) -> bytes:
    """The key ``value`` holds, or (empty) a random key drawn once for this process, with a warning."""
    if value:
        return value.encode()
    log.warning(
        "key setting empty: a random key for this process alone",
        setting=setting,
        fix="set it to secrets.token_urlsafe(32), the same in every process",
    )
    return secrets.token_bytes(32)


def verification_code(key: bytes, message_id: uuid.UUID) -> str:
    """The code of the verification email of ``message_id``: the same for every delivery of it."""
    mac = hmac.new(key, _CODE_CONTEXT + message_id.bytes, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def code_digest(code: str) -> str:
    """What the database stores of a code: its SHA-256, 64 hex digits."""
    return hashlib.sha256(code.encode()).hexdigest()
