"""Password hashing with argon2id, off the event loop (a hash costs tens of milliseconds of CPU)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher

# argon2-cffi's defaults are argon2id with RFC 9106's "low memory" profile (t=3, m=64 MiB, p=4).
_hasher = PasswordHasher()
# Threads of their own (as many as the default executor has, started on first use): in the event loop's
# default executor a burst of signups queued its DNS look-ups behind the hashes, so connecting to a database
# named by host name (`postgres` in compose) outlasted the connect timeout and signups got 503s.
_hashing = ThreadPoolExecutor(thread_name_prefix="argon2")


async def hash_password(password: str) -> str:
    """The argon2id hash of ``password``, computed in a thread of the hashing pool."""
    return await asyncio.get_running_loop().run_in_executor(_hashing, _hasher.hash, password)
