"""``signup lab``: the course's enqueue-before-commit strategies against the outbox, cell by cell."""
