"""dptstream streaming runtime: sources, stages, queues, batcher, sinks, metrics, CLI."""
