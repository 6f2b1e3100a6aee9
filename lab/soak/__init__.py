"""``signup soak``: signups for an hour while processes are killed, then one verdict and a report."""
