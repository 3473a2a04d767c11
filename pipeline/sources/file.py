"""Video sources: one decode thread per stream (PyAV), feeding the stream's own bounded queue."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

from pipeline.config import SourceConfig
from pipeline.frames import EndOfStream, Frame, FrameId
from pipeline.metrics import Metrics
from pipeline.queues import NamedQueue

log = logging.getLogger(__name__)


class SourceError(Exception):
    """A source that cannot be used at all (missing file, not a video, no video stream)."""


def probe_file(cfg: SourceConfig) -> dict[str, Any]:
    """Open a file source once to fail early with one clear line. Returns basic facts about it."""
    path = Path(cfg.path)
    if not path.exists():
        raise SourceError(f"source {cfg.id!r}: file not found: {path}")
    if path.is_dir():
        raise SourceError(f"source {cfg.id!r}: {path} is a directory, not a video file")
    if path.stat().st_size == 0:
        raise SourceError(f"source {cfg.id!r}: {path} is empty (0 bytes)")
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                kinds: list[str] = sorted({str(s.type) for s in c.streams}) or ["nothing"]
                raise SourceError(
                    f"source {cfg.id!r}: {path} has no video stream (it holds {', '.join(kinds)})"
                )
            v = c.streams.video[0]
            return {"frames": int(v.frames or 0), "width": v.codec_context.width,
                    "height": v.codec_context.height,
                    "fps": float(v.average_rate) if v.average_rate else None}
    except av.FFmpegError as e:
        raise SourceError(f"source {cfg.id!r}: cannot read {path} as video ({_av_reason(e)})") from e


def _av_reason(e: Exception) -> str:
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
            self.out.put(EndOfStream(self.id, self.frames, self.error, self.truncated))

    def run(self) -> None:
        raise NotImplementedError

    def emit(self, index: int, pts: float, image: np.ndarray, policy: Any = None) -> None:
        fid = FrameId(self.id, index, pts, time.time(), image.shape[1], image.shape[0])
        self._decoded.inc()
        self.frames += 1
        while not self.out.put(Frame(fid, image), timeout=0.2, policy=policy):
            if self.abort.is_set():
                return


class FileSource(Source):
    """Decodes a file (PyAV, threaded codec). ``block`` policy: backpressure reaches the decoder."""

    def run(self) -> None:
        path = self.cfg.path
        index = 0
        while not self._stop.is_set():
            index = self._decode_once(path, index)
            if not self.cfg.loop or self.error or self.truncated:
                break

    def _decode_once(self, path: str, index: int) -> int:
        self.state = "streaming"
        self._up.set(1)
        t0: float | None = None
        pts0: float | None = None
        declared, expected_end, interval = 0, 0.0, 0.04
        last_pts = -1.0
        first = index
        try:
            with av.open(path) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                declared = int(stream.frames or 0)
                if stream.average_rate:
                    interval = 1.0 / float(stream.average_rate)
                if container.duration:
                    expected_end = (container.duration + (container.start_time or 0)) / 1_000_000
                for frame in container.decode(stream):
                    if self._stop.is_set():
                        return index
                    pts = float(frame.time) if frame.time is not None else (index - first) * interval
                    last_pts = pts
                    if self.cfg.realtime:
                        now = time.monotonic()
                        if t0 is None or pts0 is None:
                            t0, pts0 = now, pts
                        delay = (pts - pts0) - (now - t0)
                        if delay > 0 and self._stop.wait(delay):
                            return index
                    if index >= self.start_index:
                        self.emit(index, pts, frame.to_ndarray(format="rgb24"))
                    index += 1
        except av.FFmpegError as e:
            if index == first:
                self.error = f"source {self.id!r}: cannot decode {path} ({_av_reason(e)})"
                return index
            self.truncated = True
            log.warning("source %r: %s is damaged or truncated after frame %d (%s); kept every decoded frame",
                        self.id, path, index - 1, _av_reason(e))
            return index
        if self.cfg.loop:
            return index
        decoded = index - first
        if (declared and decoded < declared) or (expected_end and last_pts + 3 * interval < expected_end):
            self.truncated = True
            log.warning("source %r: %s is truncated: decoded %d frames up to %.2fs of %.2fs (all kept)",
                        self.id, path, decoded, last_pts, expected_end)
        return index


def create_source(cfg: SourceConfig, out: NamedQueue[Any], metrics: Metrics, start_index: int = 0,
                  **live_options: Any) -> Source:
    if cfg.scheme in ("rtsp", "rtsps") or (cfg.is_live and cfg.scheme != "file"):
        from pipeline.live import RtspSource

        return RtspSource(cfg, out, metrics, start_index, **live_options)
    return FileSource(cfg, out, metrics, start_index)
