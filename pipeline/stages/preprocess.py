"""Preprocess: resize + normalise each decoded frame on the engine's device, as the checkpoint's processor does."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import torch

from engines import Engine, Preprocessor
from engines.memory import check_network_shape, gib
from pipeline.frames import EndOfStream, Frame, Prepared, Shutdown
from pipeline.metrics import Metrics
from pipeline.queues import FanIn, NamedQueue
from pipeline.stages.base import Stage
from pipeline.stages.gpu import StageStream, device_of, pinned_image

log = logging.getLogger(__name__)


class PreprocessStage(Stage):
    """Decoded frame -> network input per task (resize + normalise on the engine's device).

    Tasks whose engines want the same input share one tensor. Emits :class:`Shutdown` once every source
    has ended (it counts :class:`EndOfStream` markers; :meth:`admit` counts one more source, joining a running
    pipeline), or, with ``hold_open``, once :meth:`release` was called too. On CUDA the frame goes through pinned
    host memory, is copied once, asynchronously, and resized on this stage's own stream; the item carries the event.
    """

    name = "preprocess"

    def __init__(self, inq: FanIn[Any], outq: NamedQueue[Any], metrics: Metrics, abort: threading.Event,
                 engines: dict[str, Engine], expected_streams: int | None,
                 select_tasks: Callable[[Frame], tuple[str, ...]] | None = None, keep_image: bool = False,
                 hold_open: bool = False, on_stream_end: Callable[[EndOfStream], None] | None = None) -> None:
        super().__init__(inq, outq, metrics, abort)
        self.engines = engines
        self.expected = expected_streams
        self.ended = 0
        self.on_stream_end = on_stream_end  # after a stream's end marker: nothing of it is queued any more
        self._held_open = hold_open
        self._closed = False
        self._count_lock = threading.Lock()
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
        self._shapes_seen: set[tuple[str, int, int]] = set()
        # (task, h, w) of network shapes checked against the device's memory -> the estimate: each shape is
        # judged once (the runtime fills in the file sources' shapes at start), whatever runs meanwhile
        self.estimates: dict[tuple[str, int, int], int] = {}

    def admit(self) -> bool:
        """Count one more source, whose frames and end marker will come; False once this stage has ended."""
        with self._count_lock:
            if self._closed:
                return False
            if self.expected is not None:
                self.expected += 1
            return True

    def release(self) -> None:
        """End once every admitted source has ended (lifts ``hold_open``)."""
        self._held_open = False

    def _all_ended(self) -> bool:
        with self._count_lock:
            if self.expected is not None and self.ended >= self.expected and not self._held_open:
                self._closed = True
            return self._closed

    def next_item(self) -> Any:
        while True:
            if self._all_ended():
                return Shutdown()
            try:
                return self.inq.get(timeout=0.2)
            except TimeoutError:
                if self.abort.is_set():
                    return Shutdown()

    def on_end_of_stream(self, eos: EndOfStream) -> None:
        with self._count_lock:
            self.ended += 1
        if self.on_stream_end is not None:
            self.on_stream_end(eos)

    def process(self, frame: Frame) -> Iterable[Prepared]:
        tasks = self.select_tasks(frame) if self.select_tasks else tuple(self.engines)
        if not tasks:
            return ()
        h, w = frame.image.shape[:2]
        if (frame.id.stream_id, h, w) not in self._shapes_seen:
            self._new_shape(frame.id.stream_id, h, w)
        st = self._stream
        img = pinned_image(frame.image) if st.active else torch.from_numpy(frame.image)
        inputs: dict[str, torch.Tensor] = {}
        with st.use():
            start = st.mark()
            if st.active:  # one upload, shared by every task's resize
                img = img.to(st.device, non_blocking=True)
            for task in tasks:
                src = self._share.get(task, task)
                if src not in inputs:
                    inputs[src] = self._pre[src]([img])
                inputs[task] = inputs[src]
            event = st.record(timing=True)
            st.track(start, event)
        self.observe_gpu(st.elapsed())
        return (Prepared(frame.id, inputs, frame.image if self.keep_image else None, tuple(tasks), event),)

    def _new_shape(self, stream: str, h: int, w: int) -> None:
        """A stream's first frame of a size: log its network input shape for engines whose shape follows the
        source, and refuse it (EngineError: the run stops with that line) if it would not fit in memory."""
        for eng in self.engines.values():
            spec = eng.spec
            if spec.preprocess.fixed_shape is not None:
                continue
            shape = spec.network_shape(h, w)
            key = (spec.task, *shape)
            need = self.estimates.get(key)
            if need is None:
                need = self.estimates[key] = check_network_shape(spec, shape, f"source {stream!r} ({w}x{h})")
            log.info("source %r (%dx%d): %s network input %dx%d, estimated %s for a batch of %d", stream, w, h,
                     spec.task, shape[1], shape[0], gib(need), spec.max_batch)
        self._shapes_seen.add((stream, h, w))

    @property
    def timed_on_gpu(self) -> bool:
        return self._stream.active

    def flush(self) -> Iterable[Prepared]:
        self.observe_gpu(self._stream.elapsed(wait=True))
        return ()
