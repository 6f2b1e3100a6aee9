"""``signup bench``: latency, the API's cost of the outbox, relay drain, claim cost, worker throughput."""
