"""Publish: hands results to every sink, in batches."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pipeline.frames import EndOfStream, Result
from pipeline.metrics import Metrics
from pipeline.queues import NamedQueue
from pipeline.stages.base import Stage


class PublishStage(Stage):
    """Results -> every sink, in batches (one Redis round trip for many frames)."""

    name = "publish"

    def __init__(self, inq: NamedQueue[Any], metrics: Metrics, abort: threading.Event, sinks: Sequence[Any],
                 max_batch: int = 64, on_eos: Callable[[EndOfStream], None] | None = None) -> None:
        super().__init__(inq, None, metrics, abort)
        self.sinks = sinks
        self.max_batch = max_batch
        self._on_eos = on_eos

    def next_item(self) -> Any:
        return self.collect(self.max_batch, 0.0)

    def process(self, results: list[Result]) -> Iterable[Any]:
        for sink in self.sinks:
            sink.write(results)
        return ()

    def on_end_of_stream(self, eos: EndOfStream) -> None:
        for sink in self.sinks:
            sink.end_stream(eos)
        if self._on_eos is not None:
            self._on_eos(eos)
