"""Password hashes: argon2-cffi's own, off the event loop, their memory kept by glibc between hashes."""

from __future__ import annotations

import asyncio
import platform
import subprocess
import sys

import pytest
from argon2 import PasswordHasher, Type, extract_parameters
from argon2.low_level import hash_secret

from services.api.passwords import HASH_MEMORY, hash_now, hash_password, keep_hash_memory

HASHES = 40


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


def test_a_non_ascii_password_verifies_and_its_look_alike_does_not() -> None:
    hashed = hash_now("Ωμέγα 王力 pässwörd")
    assert PasswordHasher().verify(hashed, "Ωμέγα 王力 pässwörd")
    assert not _verifies(hashed, "Ωμέγα 王力 passwörd")


# A fresh interpreter: glibc's arenas are per process, and pytest's threads have made theirs already.
SECOND_HASH_FAULTS = """
import resource
from concurrent.futures import ThreadPoolExecutor
from services.api.passwords import hash_now, keep_hash_memory
assert keep_hash_memory()
with ThreadPoolExecutor(1) as pool:  # a thread of its own, as in the hashing pool
    pool.submit(hash_now, "first password").result()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    pool.submit(hash_now, "second password").result()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_after_keep_hash_memory_a_second_hash_reuses_the_memory_of_the_first() -> None:
    """Page faults, not time: a hash in fresh memory faults in each of its 4 KiB pages once."""
    done = subprocess.run(
        [sys.executable, "-c", SECOND_HASH_FAULTS], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    faults, pages = int(done.stdout), HASH_MEMORY // 4096
    assert faults < pages // 16, f"the second hash faulted in {faults} pages of {pages}: fresh memory"


def test_keep_hash_memory_leaves_a_c_library_other_than_glibc_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert keep_hash_memory() is False
