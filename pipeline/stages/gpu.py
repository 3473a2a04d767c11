"""CUDA streams, events and pinned host memory for the GPU stages. Every helper is a no-op on CPU.

Each GPU stage owns a :class:`StageStream`. A producer records an event after its work and passes it with the
item; the consumer's stream waits on that event (``cudaStreamWaitEvent``: the GPU orders the work, no host
thread waits). Tensors made on one stage's stream and used on another's are ``record_stream``-ed there, so the
caching allocator does not hand their memory out again before the consumer's work has run. Results come back
to the host by asynchronous copies into pinned memory; the host waits on that one event only, never on the
whole device.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch


def device_of(engines: dict[str, Any]) -> torch.device:
    """The device the engines run on (``cpu`` for engines that do not say, e.g. test fakes)."""
    for e in engines.values():
        dev = getattr(getattr(e, "spec", None), "device", None)
        if dev is not None:
            return torch.device(dev)
    return torch.device("cpu")


class StageStream:
    """A stage's own CUDA stream on a CUDA device; on CPU every method does nothing and events are ``None``."""

    def __init__(self, device: str | torch.device) -> None:
        self.device = torch.device(device)
        self.stream: torch.cuda.Stream | None = None
        self._timed: list[tuple[Any, Any]] = []  # (start, end) timing events not yet read
        if self.device.type == "cuda":
            self.stream = torch.cuda.Stream(self.device)

    @property
    def active(self) -> bool:
        return self.stream is not None

    def use(self) -> AbstractContextManager[Any]:
        """Make this stream current for the block (kernels and copies inside are queued on it)."""
        return torch.cuda.stream(self.stream) if self.stream is not None else nullcontext()

    def wait(self, event: Any) -> None:
        """Order this stream's next work after ``event`` (recorded by the producing stage)."""
        if self.stream is not None and event is not None:
            self.stream.wait_event(event)

    def record(self, blocking: bool = False, timing: bool = False) -> Any:
        """An event marking everything queued on this stream so far (``None`` on CPU).

        ``blocking``: for an event a host thread will wait on. torch's default (``blocking=False``) makes
        ``synchronize()`` spin a core at 100 % until the GPU gets there, a core the decoders need;
        a blocking-sync event puts the thread to sleep instead. Events only other streams wait on
        (``wait_event``) never block a thread: they keep the cheaper default.
        ``timing``: the event can be used with :meth:`track` to time the stream's work.
        """
        if self.stream is None:
            return None
        ev = torch.cuda.Event(enable_timing=timing, blocking=blocking)
        ev.record(self.stream)
        return ev

    def mark(self) -> Any:
        """A timing event at this point of the stream: the start of a piece of work to :meth:`track`."""
        return self.record(timing=True)

    def track(self, start: Any, end: Any) -> None:
        """Time the GPU work between two timing events of this stream (read by :meth:`elapsed`)."""
        if start is not None and end is not None:
            self._timed.append((start, end))

    def elapsed(self, wait: bool = False) -> list[float]:
        """GPU seconds of each tracked piece of work that has finished, oldest first (``wait``: all of them,
        waiting for the last). Kernel launches return at once; this is the time the GPU spent on the work."""
        out: list[float] = []
        while self._timed:
            start, end = self._timed[0]
            if wait:
                end.synchronize()
            elif not end.query():
                break
            self._timed.pop(0)
            out.append(start.elapsed_time(end) / 1000.0)
        return out

    def keep(self, *tensors: Any) -> None:
        """Tensors allocated on another stream and used on this one: keep their memory until this stream's use."""
        if self.stream is None:
            return
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.is_cuda:
                t.record_stream(self.stream)


def pinned_image(image: np.ndarray) -> torch.Tensor:
    """A copy of a decoded frame in page-locked host memory (so the copy to the GPU is truly asynchronous).

    torch's caching host allocator reuses the block only once the asynchronous copies that read it are done.
    """
    host = torch.empty(image.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(torch.from_numpy(image))
    return host


def to_host_async(t: torch.Tensor) -> torch.Tensor:
    """Queue a copy of ``t`` into pinned host memory on the current stream; valid once that stream's event is done."""
    if not t.is_cuda:
        return t
    out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    out.copy_(t, non_blocking=True)
    return out


def wait_event(event: Any) -> None:
    """Block the calling thread until ``event`` has happened (just this event, not the device)."""
    if event is not None:
        event.synchronize()
