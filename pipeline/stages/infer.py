"""Infer: the cross-stream batcher (up to batch_size frames, at most max_wait_ms) and ``engine.infer``."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from engines import Engine
from pipeline.frames import Batch, Inferred, Prepared
from pipeline.metrics import Metrics
from pipeline.queues import NamedQueue
from pipeline.stages.base import Stage, is_control
from pipeline.stages.gpu import StageStream, device_of


def shape_groups(items: Sequence[Prepared], task: str) -> list[list[int]]:
    """Indices of the items that run ``task``, grouped by network input shape (first-seen order).

    A checkpoint that keeps the source's aspect ratio has one network shape per source resolution: frames of
    one shape are batched together, each group in one ``engine.infer`` call.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(items):
        if task in p.tasks:
            groups.setdefault(tuple(p.inputs[task].shape[-2:]), []).append(i)
    return list(groups.values())


class InferStage(Stage):
    """Cross-stream batcher + inference: up to ``max_batch`` frames, waiting at most ``max_wait_ms``; frames of one
    network shape run as one batch (:func:`shape_groups`).

    On CUDA inference runs on this stage's own stream, ordered after each frame's preprocessing event; the
    outputs carry the event recorded after inference.
    """

    name = "infer"

    def __init__(self, inq: NamedQueue[Any], outq: NamedQueue[Any], metrics: Metrics, abort: threading.Event,
                 engines: dict[str, Engine], max_batch: int, max_wait_ms: float) -> None:
        super().__init__(inq, outq, metrics, abort)
        self.engines = engines
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._stream = StageStream(device_of(engines))

    def next_item(self) -> Any:
        items = self.collect(self.max_batch, self.max_wait)
        return items if is_control(items) else Batch(tuple(p.id for p in items), tuple(items))

    def process(self, batch: Batch) -> Iterable[Inferred]:
        self.metrics.batch_size.observe(len(batch.items))
        per_frame: list[dict[str, Any]] = [{} for _ in batch.items]
        st = self._stream
        with st.use():
            for p in batch.items:
                st.wait(p.event)
            for task, engine in self.engines.items():
                for idx in shape_groups(batch.items, task):
                    xs = [batch.items[i].inputs[task] for i in idx]
                    st.keep(*xs)
                    x = torch.cat(xs, dim=0)
                    out = engine.infer(x)
                    for name, tensor in out.items():
                        for k, i in enumerate(idx):
                            per_frame[i][name] = tensor[k]
            event = st.record()
        done = time.time()
        for p in batch.items:
            self.metrics.frames.labels(stream=p.id.stream_id, stage="inferred").inc()
        return [Inferred(p.id, outs, p.image, done, event)
                for p, outs in zip(batch.items, per_frame, strict=True)]
