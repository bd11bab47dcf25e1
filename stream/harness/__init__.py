"""What the demo, the integration tests and the benchmarks share: worker processes and the
shipped scenario."""
