"""Password hashing with argon2id, off the event loop (a hash costs tens of milliseconds of CPU).

The hashes are argon2-cffi's ``PasswordHasher``'s: RFC 9106's "low memory" profile (argon2id, t=3,
m=64 MiB, p=4), the PHC string ``PasswordHasher().verify`` checks.

libargon2 mallocs the 64 MiB of every hash. By default glibc serves an allocation that large with a fresh
``mmap`` (always, in a thread's own arena), so the kernel maps and zeroes 16,384 pages for each hash and
unmaps them after: about a quarter of a hash's CPU time. ``keep_hash_memory`` asks glibc, through
``mallopt``, to serve it from the process heap and keep it there between hashes; libargon2 wipes its memory
before it frees it, so nothing derived from a password stays in the heap.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import platform
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher

PARAMETERS = PasswordHasher()
"""argon2-cffi's defaults: what ``hash_now`` computes and ``PasswordHasher().verify`` checks."""
CPUS = len(os.sched_getaffinity(0))
HASH_MEMORY = PARAMETERS.memory_cost * 1024
"""The bytes libargon2 allocates for one hash."""

# mallopt(3)'s parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8

# Threads of their own, one per CPU: in the event loop's default executor a burst of signups queued its DNS
# look-ups behind the hashes, so connecting to a database named by host name (`postgres` in compose)
# outlasted the connect timeout and signups got 503s.
_hashing = ThreadPoolExecutor(max_workers=CPUS, thread_name_prefix="argon2")


def keep_hash_memory() -> bool:
    """Have glibc's malloc keep the memory of one hash per CPU for the next hashes; False where the C
    library is not glibc or refuses a setting. Call it at process start, before a second thread allocates.

    - One arena: a thread's own arena grows in heaps of at most 64 MiB, so it maps a hash's memory afresh.
    - A mapping threshold just above a hash's memory, so the heap serves it.
    - A trim threshold above what the hashes of every CPU at once leave free, so free() keeps it.

    The price: the memory stays resident, 64 MiB per hash run at once (128 MiB on two cores), and the
    process's few threads share one arena.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    settings = (
        (M_ARENA_MAX, 1),
        (M_MMAP_THRESHOLD, HASH_MEMORY + 1024 * 1024),
        (M_TRIM_THRESHOLD, (CPUS + 1) * HASH_MEMORY),
    )
    accepted = [mallopt(parameter, value) == 1 for parameter, value in settings]
    return all(accepted)


def hash_now(password: str, *, salt: bytes | None = None) -> str:
    """The argon2id PHC string of ``password``, computed in this thread (``salt``: random unless given).

    Raises argon2-cffi's ``HashingError`` if libargon2 fails (e.g. it cannot have its memory).
    """
    return PARAMETERS.hash(password, salt=salt)


async def hash_password(password: str) -> str:
    """The argon2id hash of ``password``, computed in a thread of the hashing pool."""
    return await asyncio.get_running_loop().run_in_executor(_hashing, hash_now, password)
