"""Pipeline stages: small classes with one job and a lifecycle (start, process, stop).

A stage reads from its input, processes data items, forwards :class:`EndOfStream` in order, and on
:class:`Shutdown` finishes what it holds, forwards the marker (from a ``finally``) and exits.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engines import Engine, Preprocessor
from pipeline.frames import Batch, EndOfStream, Frame, Inferred, Prepared, Result, Shutdown
from pipeline.gpu import StageStream, device_of, pinned_image, to_host_async, wait_event
from pipeline.metrics import Metrics
from pipeline.postprocess import (
    DepthStats,
    class_counts,
    class_fractions,
    depth_dict,
    depth_stats,
    mask_size,
    resize_depth,
    segment,
)
from pipeline.queues import FanIn, NamedQueue

log = logging.getLogger(__name__)

Marker = (EndOfStream, Shutdown)


def is_control(item: object) -> bool:
    return isinstance(item, Marker)


class Stage:
    """Base stage: one thread, one input, one output. Subclasses implement :meth:`process`."""

    name = "stage"

    def __init__(self, inq: NamedQueue[Any] | FanIn[Any], outq: NamedQueue[Any] | None, metrics: Metrics,
                 abort: threading.Event) -> None:
        self.inq = inq
        self.outq = outq
        self.metrics = metrics
        self.abort = abort  # set when the pipeline is dead: blocked puts give up
        self.error: BaseException | None = None
        self._held: Any = None  # a marker met while collecting a batch
        self._thread: threading.Thread | None = None
        self._seconds = metrics.stage_seconds.labels(stage=self.name)
        self.on_fatal: Callable[[Stage, BaseException], None] | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name=f"stage-{self.name}", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def put(self, item: Any) -> bool:
        """Blocking put that gives up only when the pipeline is aborting."""
        if self.outq is None:
            return True
        while not self.outq.put(item, timeout=0.2):
            if self.abort.is_set():
                return False
        return True

    def next_item(self) -> Any:
        while True:
            try:
                return self.inq.get(timeout=0.2)
            except TimeoutError:
                if self.abort.is_set():
                    return Shutdown()

    def collect(self, max_items: int, max_wait: float) -> Any:
        """Up to ``max_items`` data items: the first blocks, the rest come while ``max_wait`` seconds last
        (0: only what is already queued). A marker met on the way ends the batch and is returned next time."""
        if self._held is not None:
            item, self._held = self._held, None
            return item
        first = Stage.next_item(self)
        if is_control(first):
            return first
        items = [first]
        deadline = time.monotonic() + max_wait
        while len(items) < max_items:
            remaining = deadline - time.monotonic()
            try:
                nxt = self.inq.get(timeout=remaining) if remaining > 0 else self.inq.get_nowait()
            except TimeoutError:
                break
            if nxt is None:
                break
            if is_control(nxt):
                self._held = nxt
                break
            items.append(nxt)
        return items

    def _main(self) -> None:
        try:
            while True:
                item = self.next_item()
                if isinstance(item, Shutdown):
                    for out in self.flush():
                        self.put(out)
                    return
                if isinstance(item, EndOfStream):
                    for out in self.flush():
                        self.put(out)
                    self.on_end_of_stream(item)
                    self.put(item)
                    continue
                t0 = time.perf_counter()
                outs = list(self.process(item))
                self._seconds.observe(time.perf_counter() - t0)
                for out in outs:
                    self.put(out)
        except BaseException as e:
            self.error = e
            log.debug("stage %s failed", self.name, exc_info=True)
            if self.on_fatal is not None:
                self.on_fatal(self, e)
        finally:
            if self.outq is not None:
                self.outq.put(Shutdown())

    def process(self, item: Any) -> Iterable[Any]:
        raise NotImplementedError

    def flush(self) -> Iterable[Any]:
        return ()

    def on_end_of_stream(self, eos: EndOfStream) -> None:
        pass


class PreprocessStage(Stage):
    """Decoded frame -> network input per task (resize + normalise on the engine's device).

    Tasks whose engines want the same input share one tensor. Emits :class:`Shutdown` once every source
    has ended (it counts :class:`EndOfStream` markers). On CUDA the frame goes through pinned host memory,
    is copied once, asynchronously, and resized on this stage's own stream; the item carries the event.
    """

    name = "preprocess"

    def __init__(self, inq: FanIn[Any], outq: NamedQueue[Any], metrics: Metrics, abort: threading.Event,
                 engines: dict[str, Engine], expected_streams: int | None,
                 select_tasks: Callable[[Frame], tuple[str, ...]] | None = None, keep_image: bool = False) -> None:
        super().__init__(inq, outq, metrics, abort)
        self.engines = engines
        self.expected = expected_streams
        self.ended = 0
        self.select_tasks = select_tasks
        self.keep_image = keep_image
        self._pre: dict[str, Preprocessor] = {}
        self._share: dict[str, str] = {}  # task -> task whose tensor it reuses
        by_key: dict[tuple[Any, ...], str] = {}
        for task, eng in engines.items():
            s = eng.spec
            key = (s.preprocess, s.device, s.dtype)
            if key in by_key:
                self._share[task] = by_key[key]
            else:
                by_key[key] = task
                self._pre[task] = Preprocessor(s.preprocess, s.device, s.dtype)
        self._stream = StageStream(device_of(engines))

    def next_item(self) -> Any:
        if self.expected is not None and self.ended >= self.expected:
            return Shutdown()
        return super().next_item()

    def on_end_of_stream(self, eos: EndOfStream) -> None:
        self.ended += 1

    def process(self, frame: Frame) -> Iterable[Prepared]:
        tasks = self.select_tasks(frame) if self.select_tasks else tuple(self.engines)
        if not tasks:
            return ()
        st = self._stream
        img = pinned_image(frame.image) if st.active else torch.from_numpy(frame.image)
        inputs: dict[str, torch.Tensor] = {}
        with st.use():
            if st.active:  # one upload, shared by every task's resize
                img = img.to(st.device, non_blocking=True)
            for task in tasks:
                src = self._share.get(task, task)
                if src not in inputs:
                    inputs[src] = self._pre[src]([img])
                inputs[task] = inputs[src]
            event = st.record()
        return (Prepared(frame.id, inputs, frame.image if self.keep_image else None, tuple(tasks), event),)


class InferStage(Stage):
    """Cross-stream batcher + inference: up to ``max_batch`` frames, waiting at most ``max_wait_ms``.

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
                idx = [i for i, p in enumerate(batch.items) if task in p.tasks]
                if not idx:
                    continue
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


@dataclass
class _Launched:
    """A frame whose postprocessing is queued on the GPU; its small results land in pinned host memory."""

    item: Inferred
    mask: torch.Tensor | None
    counts: torch.Tensor | None
    depth: DepthStats | None
    depth_map: torch.Tensor | None
    event: Any


class PostprocessStage(Stage):
    """Logits -> uint8 mask at the mask size + class fractions; depth -> summary. Small results to host.

    On CUDA the work runs on this stage's own stream after the inference event, and only the uint8 mask, the
    class histogram and the depth summary numbers are copied back, asynchronously into pinned memory. Up to
    ``inflight`` frames are queued before the oldest is waited for (its event alone), so the host formats one
    frame's results while the GPU computes the next ones. On CPU each frame is finished at once.
    """

    name = "postprocess"

    def __init__(self, inq: NamedQueue[Any], outq: NamedQueue[Any], metrics: Metrics, abort: threading.Event,
                 mask_spec: str, net_side: int, num_classes: int, depth_grid: int, depth_kind: str,
                 keep_depth_map: bool = False, device: str | torch.device | None = None, inflight: int = 4) -> None:
        super().__init__(inq, outq, metrics, abort)
        self.mask_spec = mask_spec
        self.net_side = net_side
        self.num_classes = num_classes
        self.grid = depth_grid
        self.kind = depth_kind
        self.keep_depth_map = keep_depth_map
        self._stream = StageStream(device) if device is not None else None  # else: the first item's device
        self.inflight = max(1, inflight)
        self._queued: collections.deque[_Launched] = collections.deque()

    def _stream_for(self, item: Inferred) -> StageStream:
        if self._stream is None:
            first = next(iter(item.outputs.values()), None)
            self._stream = StageStream(first.device if isinstance(first, torch.Tensor) else "cpu")
        return self._stream

    def _launch(self, item: Inferred) -> _Launched:
        """Queue every computation for ``item`` (on CPU: compute it)."""
        st = self._stream_for(item)
        st.wait(item.event)
        st.keep(*item.outputs.values())
        w, h = mask_size(self.mask_spec, item.id.width, item.id.height, self.net_side)
        hist = max(self.num_classes, 256)
        mask_t = counts = depth_map = None
        stats: DepthStats | None = None
        if "logits" in item.outputs:
            mask_t = segment(item.outputs["logits"], (h, w))
            counts = class_counts(mask_t, hist)
        if "depth" in item.outputs:
            d = resize_depth(item.outputs["depth"], (h, w))
            stats = depth_stats(d, mask_t, self.grid, self.kind, hist, counts)
            if self.keep_depth_map:
                depth_map = d
        if st.active:
            mask_t = to_host_async(mask_t) if mask_t is not None else None
            counts = to_host_async(counts) if counts is not None else None
            stats = stats.replace([to_host_async(t) for t in stats.tensors()]) if stats is not None else None
            depth_map = to_host_async(depth_map) if depth_map is not None else None
        return _Launched(item, mask_t, counts, stats, depth_map, st.record())

    def _finish(self, job: _Launched) -> Result:
        wait_event(job.event)
        item = job.item
        mask = classes = None
        if job.mask is not None and job.counts is not None:
            classes = class_fractions(job.mask, self.num_classes, counts=job.counts)
            mask = job.mask.cpu().numpy()
        depth = depth_dict(job.depth.replace([t.cpu() for t in job.depth.tensors()]), self.grid, self.kind) \
            if job.depth is not None else None
        depth_map = job.depth_map.cpu().numpy() if job.depth_map is not None else None
        return Result(item.id, mask, classes or {}, depth, depth_map, item.image)

    def process(self, item: Inferred) -> Iterable[Result]:
        st = self._stream_for(item)
        if not st.active:
            return (self._finish(self._launch(item)),)
        with st.use():
            self._queued.append(self._launch(item))
        out = []
        while self._queued and (len(self._queued) > self.inflight or self._queued[0].event.query()):
            out.append(self._finish(self._queued.popleft()))
        return out

    def flush(self) -> Iterable[Result]:
        out = [self._finish(job) for job in self._queued]
        self._queued.clear()
        return out


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
