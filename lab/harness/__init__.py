"""The harness the lab, the bench, the soak and the tests share; each module holds one thing.

``processes`` (a command in its own process group; ports), ``redis_server``, ``postgres`` (a private
cluster), ``database`` (throw-away databases; users and unpublished outbox rows), ``queues`` (what Dramatiq
holds in Redis), ``smtp`` (the recording sink), ``load`` (signups over HTTP), ``polling`` (waits with a
deadline), ``measure`` (percentiles, log lines, the machine) and ``stack`` (all of them for one run).
"""
