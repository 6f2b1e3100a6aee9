"""Password hashing with argon2id, off the event loop (a hash costs tens of milliseconds of CPU).

The hashes are argon2-cffi's: RFC 9106's "low memory" profile (argon2id, t=3, m=64 MiB, p=4), the PHC
string ``PasswordHasher`` writes and verifies. Two things differ in how they are computed:

- **Memory.** libargon2 mallocs the 64 MiB of every hash, which on Linux is a fresh ``mmap``: the kernel
  maps and zeroes 16,384 pages for each hash and unmaps them after, kernel time in every hash. Each hashing
  thread keeps one buffer instead and lends
  it to libargon2 through its allocation callbacks; libargon2 wipes the memory before it hands it back
  (``clear_internal_memory``), so nothing derived from a password stays in it between hashes. The price is
  64 MiB resident per hashing thread; the pool starts threads only as hashes run at once, at most one per
  CPU this process may use.
- **Threads.** libargon2 starts one thread per lane (4) for every pass and slice; a hash here runs its
  lanes on at most as many threads as there are CPUs.

``argon2.low_level.core`` and its C context are argon2-cffi's public but unstable API ("can change with
any release"): the versions are capped in ``pyproject.toml`` and ``tests/unit/test_passwords.py`` checks
the seam (the same PHC string as ``argon2.low_level.hash_secret``, the buffer reused and wiped).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import mmap
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _argon2_cffi_bindings import ffi, lib
from argon2 import PasswordHasher, Type
from argon2.exceptions import HashingError
from argon2.low_level import core, error_to_str

PARAMETERS = PasswordHasher()
"""argon2-cffi's defaults: what ``hash_now`` computes and ``PasswordHasher().verify`` checks."""
CPUS = len(os.sched_getaffinity(0))
_LANE_THREADS = min(PARAMETERS.parallelism, CPUS)

# Threads of their own, one per CPU (each keeps a 64 MiB buffer): in the event loop's default executor a
# burst of signups queued its DNS look-ups behind the hashes, so connecting to a database named by host
# name (`postgres` in compose) outlasted the connect timeout and signups got 503s.
_hashing = ThreadPoolExecutor(max_workers=CPUS, thread_name_prefix="argon2")


class _Buffers(threading.local):
    """The calling thread's memory for libargon2: (the mapping, a C pointer into it), made on first use."""

    memory: tuple[mmap.mmap, Any] | None = None

    def lend(self, size: int) -> Any:
        if self.memory is None or len(self.memory[0]) < size:
            mapping = mmap.mmap(-1, size)
            if hasattr(mmap, "MADV_HUGEPAGE"):  # fewer TLB misses where the kernel grants huge pages
                with contextlib.suppress(OSError):  # EINVAL from a kernel built without them
                    mapping.madvise(mmap.MADV_HUGEPAGE)
            self.memory = (mapping, ffi.from_buffer(mapping))
        return ffi.cast("uint8_t *", self.memory[1])


_buffers = _Buffers()


def _on_allocation_error(exception: type[BaseException] | None, value: Any, traceback: Any) -> None:
    """An exception in the callback leaves the pointer NULL: libargon2 then fails the hash, never a crash."""


@ffi.callback("int(uint8_t **, size_t)", onerror=_on_allocation_error)  # type: ignore[untyped-decorator]
def _allocate(memory: Any, size: int) -> int:
    memory[0] = ffi.NULL
    memory[0] = _buffers.lend(size)
    return 0


@ffi.callback("void(uint8_t *, size_t)")  # type: ignore[untyped-decorator]
def _keep(memory: Any, size: int) -> None:
    """libargon2 has wiped the memory; the thread keeps it for its next hash."""


def hash_now(password: str, *, salt: bytes | None = None) -> str:
    """The argon2id PHC string of ``password``, computed in this thread (``salt``: random unless given)."""
    secret = password.encode()
    salt = secrets.token_bytes(PARAMETERS.salt_len) if salt is None else salt
    out = ffi.new("uint8_t[]", PARAMETERS.hash_len)
    context = ffi.new(
        "argon2_context *",
        {
            "out": out,
            "outlen": PARAMETERS.hash_len,
            "pwd": ffi.new("uint8_t[]", secret),
            "pwdlen": len(secret),
            "salt": ffi.new("uint8_t[]", salt),
            "saltlen": len(salt),
            "secret": ffi.NULL,
            "secretlen": 0,
            "ad": ffi.NULL,
            "adlen": 0,
            "t_cost": PARAMETERS.time_cost,
            "m_cost": PARAMETERS.memory_cost,
            "lanes": PARAMETERS.parallelism,
            "threads": _LANE_THREADS,
            "version": lib.ARGON2_VERSION_NUMBER,
            "allocate_cbk": _allocate,
            "free_cbk": _keep,
            "flags": lib.ARGON2_DEFAULT_FLAGS,
        },
    )
    status = core(context, Type.ID.value)
    if status != lib.ARGON2_OK:
        raise HashingError(error_to_str(status))
    return (
        f"$argon2id$v={lib.ARGON2_VERSION_NUMBER}"
        f"$m={PARAMETERS.memory_cost},t={PARAMETERS.time_cost},p={PARAMETERS.parallelism}"
        f"${_b64(salt)}${_b64(ffi.buffer(out)[:])}"
    )


def _b64(data: bytes) -> str:
    """Base64 without padding, as the PHC string format writes it."""
    return base64.b64encode(data).rstrip(b"=").decode("ascii")


async def hash_password(password: str) -> str:
    """The argon2id hash of ``password``, computed in a thread of the hashing pool."""
    return await asyncio.get_running_loop().run_in_executor(_hashing, hash_now, password)
