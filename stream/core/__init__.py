"""The pure domain: the margin model, positions, calls, records and the engine. No Kafka, no I/O."""
