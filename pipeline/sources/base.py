"""The source base: a decode thread per stream that puts frames on its queue and ends with a marker."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from pipeline.config import SourceConfig
from pipeline.frames import EndOfStream, Frame, FrameId
from pipeline.metrics import Metrics
from pipeline.queues import NamedQueue

log = logging.getLogger(__name__)


class SourceError(Exception):
    """A source that cannot be used at all (missing file, not a video, no video stream)."""


def av_reason(e: Exception) -> str:
    msg = getattr(e, "strerror", None) or str(e)
    return str(msg).split(":", 1)[0].strip() if "[Errno" in str(msg) else str(msg).strip()


class Source:
    """Base: a thread that decodes frames into ``out``, then sends :class:`EndOfStream`."""

    def __init__(self, cfg: SourceConfig, out: NamedQueue[Any], metrics: Metrics,
                 start_index: int = 0) -> None:
        self.cfg = cfg
        self.out = out
        self.metrics = metrics
        self.start_index = start_index  # frames before this index were already published (resume)
        self._stop = threading.Event()
        self.abort = threading.Event()  # the pipeline is dead: a blocked put gives up
        self._thread: threading.Thread | None = None
        self.frames = 0  # decoded frames handed downstream
        self.state = "idle"
        self.error: str | None = None
        self.truncated = False
        self.fatal = False  # its end ends the run (a camera down at start with live.fail_if_down_at_start)
        self.bad_packets = 0  # packets skipped: refused by the decoder, or cut off by the end of a file
        self._skipped_packets = metrics.skipped_packets.labels(stream=cfg.id)
        self._decoded = metrics.frames.labels(stream=cfg.id, stage="decoded")
        self._up = metrics.stream_up.labels(stream=cfg.id)

    @property
    def id(self) -> str:
        return self.cfg.id

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name=f"source-{self.id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _main(self) -> None:
        try:
            self.run()
        except Exception as e:  # recoverable for the pipeline: this stream ends, others go on
            self.error = self.error or f"source {self.id!r}: {type(e).__name__}: {e}"
            log.debug("source %s failed", self.id, exc_info=True)
        finally:
            self.state = "stopped"
            self._up.set(0)
            self.out.put(EndOfStream(self.id, self.frames, self.error, self.truncated, self.bad_packets))

    def run(self) -> None:
        raise NotImplementedError

    def emit(self, index: int, pts: float, image: np.ndarray, policy: Any = None) -> None:
        fid = FrameId(self.id, index, pts, time.time(), image.shape[1], image.shape[0])
        self._decoded.inc()
        self.frames += 1
        while not self.out.put(Frame(fid, image), timeout=0.2, policy=policy):
            if self.abort.is_set():
                return
