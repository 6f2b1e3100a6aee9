"""Password hashing with argon2id, off the event loop (a hash costs tens of milliseconds of CPU)."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher

# argon2-cffi's defaults are argon2id with RFC 9106's "low memory" profile (t=3, m=64 MiB, p=4).
_hasher = PasswordHasher()


async def hash_password(password: str) -> str:
    """The argon2id hash of ``password``, computed in a worker thread."""
    return await asyncio.to_thread(_hasher.hash, password)
