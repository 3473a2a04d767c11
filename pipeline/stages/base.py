"""The stage lifecycle: a thread that takes items from its input queue, processes them and forwards markers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from pipeline.frames import EndOfStream, Shutdown
from pipeline.metrics import Metrics
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
                    replaced = self.on_end_of_stream(item)
                    self.put(replaced if replaced is not None else item)
                    continue
                if self.abort.is_set():
                    return  # the pipeline is dead: what is still queued is not worth computing
                t0 = time.perf_counter()
                outs = list(self.process(item))
                if not self.timed_on_gpu:
                    self._seconds.observe(time.perf_counter() - t0)
                for out in outs:
                    if not self.put(out):
                        return  # aborted while waiting for room downstream
        except BaseException as e:
            self.error = e
            log.debug("stage %s failed", self.name, exc_info=True)
            if self.on_fatal is not None:
                self.on_fatal(self, e)
        finally:
            if self.outq is not None:
                self.outq.put(Shutdown())

    @property
    def timed_on_gpu(self) -> bool:
        """True when the stage's work runs on a CUDA stream: ``stage_seconds`` then gets the GPU time between
        CUDA events (:meth:`observe_gpu`), not the host time of the call, which only queues kernels."""
        return False

    def observe_gpu(self, seconds: Iterable[float]) -> None:
        for s in seconds:
            self._seconds.observe(s)

    def process(self, item: Any) -> Iterable[Any]:
        raise NotImplementedError

    def flush(self) -> Iterable[Any]:
        return ()

    def on_end_of_stream(self, eos: EndOfStream) -> EndOfStream | None:
        """Called when ``eos`` passes (after :meth:`flush`); may return a replacement marker to forward."""
        return None


