"""What one soak does: how many signups, how fast, which faults and when, and how long it waits."""

from __future__ import annotations

from dataclasses import dataclass

# Short backoffs, so that a 451 or a crash is retried within the soak's deadline.
SOAK_ENV = {
    "SMTP_TIMEOUT_MS": "5000",
    "RELAY_POLL_INTERVAL_MS": "500",
    "WORKER_MIN_BACKOFF_MS": "100",
    "WORKER_MAX_BACKOFF_MS": "2000",
    # Reconciliation sooner than the defaults (30 s, 10 s), so that what Redis loses comes back within the
    # drain; docs/RELIABILITY.md reports the delay this causes.
    "RECONCILE_GRACE_MS": "10000",
    "RECONCILE_INTERVAL_MS": "2000",
}


@dataclass(frozen=True, kw_only=True)
class SoakPlan:
    signups: int = 10_000
    rate: float = 3.0
    """Signups started per second, whatever the answers. Each costs an argon2id hash (64 MiB, 0.1 to 0.5 s
    of CPU): on a shared 2-core machine, with the relay and the worker restarting, the API keeps up with
    about 4 per second, so 10,000 signups take about an hour."""
    kill_every_s: tuple[float, float] = (5.0, 20.0)
    """The relay and the worker are each SIGKILLed after a random pause in this range, again and again."""
    kills_until: float = 0.8
    """Share of the load during which kills happen: the Redis restart comes later, so that no worker
    restart can rescue a message a live worker stranded when Redis went away."""
    postgres_at: float = 0.4
    redis_at: float = 0.9
    flushall_at: float = 0.5
    """When an operator's ``FLUSHALL`` wipes Redis (at the first worker kill after it): every queued message
    is lost."""
    redis_wipe_at: float = 0.7
    """When Redis is SIGKILLed and restarts without its data (as without persistence): every queued message
    is lost."""
    down_for_s: tuple[float, float] = (0.2, 3.0)
    smtp_fail_ratio: float = 0.2
    redis_down_s: float = 2.0
    postgres_down_s: float = 3.0
    outage_grace_s: float = 10.0
    """503s are expected from the PostgreSQL crash until this long after it is back (pool timeouts)."""
    resend_share: float = 0.1
    """Share of accepted signups whose user then asks for new emails (lab/soak/resends.py)."""
    resend_repeats: int = 2
    """Requests such a user sends at once right after the signup's answer: inside the interval (the signup's
    own email counts as the first of it), so the limit must refuse every one."""
    resend_later: int = 3
    """Requests sent after those, one at a time, each more than the interval after the previous answer: each
    passes while the daily limit allows (with the defaults two pass and the third is refused)."""
    resend_verify_share: float = 0.25
    """Share of resending users who first open their first email's link: their requests then send nothing."""
    resend_min_interval_s: int = 5
    """RESEND_MIN_INTERVAL_S for the API (60 in production): short, so that resends pass during the run."""
    resend_max_per_day: int = 2
    """RESEND_MAX_PER_DAY for the API (5 in production)."""
    drain_timeout_s: float = 180.0
    settle_s: float = 3.0
    seed: int | None = None

    @property
    def env(self) -> dict[str, str]:
        """The settings every service of the soak runs with."""
        limits = {
            "RESEND_MIN_INTERVAL_S": str(self.resend_min_interval_s),
            "RESEND_MAX_PER_DAY": str(self.resend_max_per_day),
        }
        return {**SOAK_ENV, **limits}
