"""Long-running processes besides the stream worker: the index replica (with its search API)
and the demo that runs everything together."""
