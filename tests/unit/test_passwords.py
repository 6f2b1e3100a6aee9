"""Hashing passwords does not hold up the event loop's other work in threads (its DNS look-ups)."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher

from services.api.passwords import hash_password

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
