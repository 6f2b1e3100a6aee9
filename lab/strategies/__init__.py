"""The course's ways of handing the email on, and the faults the lab injects, outside the product.

The product's API writes every message to the outbox, and its worker retries a message whose user is not
visible yet. The lab starts the same processes through ``python -m lab.strategies api|worker`` (``serve.py``),
which reads the knobs below from the environment and hands the product what they ask for through its public
seams: ``create_app(settings, dispatcher=…, before_commit=…, exception_handlers=…)`` and
``build_broker(settings, handlers=…)``.

- ``knobs.py``: ``DISPATCH_STRATEGY``, ``TASK_PROCESS_IN_MS``, ``FAULT_COMMIT_DELAY_MS``,
  ``FAULT_ROLLBACK_RATIO``, ``WORKER_SKIP_RETRY_MISSING_USER``.
- ``dispatchers.py``: enqueue to Redis before the commit (``immediate``, ``fixed_delay``), or nothing
  (``none``).
- ``faults.py``: a slow commit and a random rollback between the dispatch and the commit; the course's
  ``SkipRetry`` of a message whose user is missing.
"""
