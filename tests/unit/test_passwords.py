"""Password hashes: argon2-cffi's own, computed in a reused (and wiped) buffer, off the event loop."""

from __future__ import annotations

import asyncio
import errno
import mmap
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest
from argon2 import PasswordHasher, Type, extract_parameters
from argon2.exceptions import HashingError
from argon2.low_level import hash_secret

from services.api import passwords
from services.api.passwords import hash_now, hash_password

HASHES = 40
T = TypeVar("T")


async def test_a_host_name_resolves_while_a_burst_of_passwords_is_hashed() -> None:
    hashes = [asyncio.create_task(hash_password(f"password {i}")) for i in range(HASHES)]
    await asyncio.sleep(0)  # every hash is submitted before the look-up
    try:
        await asyncio.get_running_loop().getaddrinfo("localhost", 5432)
        done = sum(task.done() for task in hashes)
        # Queued behind the hashes, the look-up would have waited for all but the last round of them.
        assert done < HASHES // 2, f"{done} of {HASHES} hashes finished before one DNS look-up"
    finally:
        for task in hashes:
            task.cancel()
        await asyncio.gather(*hashes, return_exceptions=True)


async def test_the_hash_is_argon2id_and_verifies_its_password_only() -> None:
    hashed = await hash_password("correct horse")
    assert hashed.startswith("$argon2id$") and PasswordHasher().verify(hashed, "correct horse")
    assert not _verifies(hashed, "wrong horse")


def _verifies(hashed: str, password: str) -> bool:
    try:
        return PasswordHasher().verify(hashed, password)
    except Exception:
        return False


def test_the_hash_is_the_phc_string_argon2_cffi_writes_for_the_same_salt() -> None:
    """The seam with ``argon2.low_level.core``: the context we fill computes what argon2-cffi computes."""
    defaults, salt, password = PasswordHasher(), b"sixteen byte s\x00\xff", "pässwörd Ωμέγα"
    expected = hash_secret(
        password.encode(),
        salt,
        time_cost=defaults.time_cost,
        memory_cost=defaults.memory_cost,
        parallelism=defaults.parallelism,
        hash_len=defaults.hash_len,
        type=Type.ID,
    ).decode()
    assert hash_now(password, salt=salt) == expected
    made = extract_parameters(hash_now(password))
    assert (made.type, made.time_cost, made.memory_cost, made.parallelism, made.hash_len, made.salt_len) == (
        Type.ID,
        defaults.time_cost,
        defaults.memory_cost,
        defaults.parallelism,
        defaults.hash_len,
        defaults.salt_len,
    )
    assert not defaults.check_needs_rehash(hash_now(password))


def test_two_hashes_of_one_password_have_different_salts() -> None:
    first, second = hash_now("same password"), hash_now("same password")
    assert first != second and first.split("$")[4] != second.split("$")[4]


def test_a_thread_reuses_its_buffer_and_it_is_wiped_after_each_hash() -> None:
    """libargon2 clears its memory before handing it back, so no password-derived block stays in it."""

    def buffers() -> tuple[int, bool]:
        hash_now("first password")
        assert passwords._buffers.memory is not None
        mapping = passwords._buffers.memory[0]
        hash_now("second password")
        assert passwords._buffers.memory[0] is mapping, "the second hash mapped new memory"
        return len(mapping), not any(mapping[:])

    size, wiped = _in_a_new_thread(buffers)
    assert size == PasswordHasher().memory_cost * 1024
    assert wiped, "password-derived memory was left in the buffer"


def test_memory_that_cannot_be_had_fails_the_hash_with_argon2_cffis_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(size: int) -> object:
        raise MemoryError

    monkeypatch.setattr(passwords._buffers, "lend", refuse)
    with pytest.raises(HashingError, match=r"[Mm]emory allocation"):
        hash_now("a password")


def test_a_kernel_without_huge_pages_still_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """``madvise(MADV_HUGEPAGE)`` fails with EINVAL where the kernel has no transparent huge pages."""

    class NoHugePages(mmap.mmap):
        def madvise(self, *args: int) -> None:
            raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(mmap, "mmap", NoHugePages)  # the module passwords.py maps its buffers with
    hashed = _in_a_new_thread(lambda: hash_now("a password"))  # a thread with no buffer yet
    assert PasswordHasher().verify(hashed, "a password")


def _in_a_new_thread(work: Callable[[], T]) -> T:
    """What ``work`` returns when run in a thread of its own (its own buffer); fails if it raised."""
    outcome: list[T] = []
    thread = threading.Thread(target=lambda: outcome.append(work()))
    thread.start()
    thread.join()
    assert outcome, "the work failed in its thread"
    return outcome[0]
