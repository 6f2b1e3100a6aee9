"""Experiments on the real processes, apart from the services: four packages, imports pointing one way.

- ``lab.harness``: what every experiment (and the test suite) runs on: processes, a private Redis and
  PostgreSQL, the SMTP sink, the load, polling, reading Redis and the database, and measuring.
- ``lab.compare``: ``signup lab``, the course's strategies against the outbox under the same faults.
- ``lab.bench``: ``signup bench``, five benchmarks, each a ratio to a baseline of the same run.
- ``lab.soak``: ``signup soak``, thousands of signups while every process is killed, judged afterwards.

``compare``, ``bench`` and ``soak`` import ``harness``; nothing imports them back, nor each other.
"""
