"""The faust worker process: router, engine agent, persister, outbox, lifecycle."""
