"""The runtime: :class:`~pipeline.runtime.pipeline.Pipeline` wires sources, queues, stages and sinks; ``app``
creates engines, sinks and the metrics server for a config; ``degrade`` is the latency-budget controller."""

from __future__ import annotations

from pipeline.runtime.app import Runtime, start_runtime
from pipeline.runtime.pipeline import Pipeline, PipelineError, RunReport

__all__ = ["Pipeline", "PipelineError", "RunReport", "Runtime", "start_runtime"]
