"""Video files through PyAV: probing, decoding every frame, truncation detection, resume from a frame index."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import av

from pipeline.config import SourceConfig
from pipeline.sources.base import Source, SourceError, av_reason

log = logging.getLogger(__name__)


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
        raise SourceError(f"source {cfg.id!r}: cannot read {path} as video ({av_reason(e)})") from e


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
                self.error = f"source {self.id!r}: cannot decode {path} ({av_reason(e)})"
                return index
            self.truncated = True
            log.warning("source %r: %s is damaged or truncated after frame %d (%s); kept every decoded frame",
                        self.id, path, index - 1, av_reason(e))
            return index
        if self.cfg.loop:
            return index
        decoded = index - first
        if (declared and decoded < declared) or (expected_end and last_pts + 3 * interval < expected_end):
            self.truncated = True
            log.warning("source %r: %s is truncated: decoded %d frames up to %.2fs of %.2fs (all kept)",
                        self.id, path, decoded, last_pts, expected_end)
        return index


