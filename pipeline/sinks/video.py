"""``video:PATH``: an overlay MP4 per stream (frame | mask blend | depth), drawn by :mod:`pipeline.overlay`."""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import ConfigError, PipelineConfig
from pipeline.frames import EndOfStream, Result
from pipeline.metrics import Metrics
from pipeline.overlay import MAX_PANEL_SIDE, VIDEO_SUFFIXES, compose, panel_size
from pipeline.sinks.base import Sink, SinkError
from pipeline.zones import ZonePlan

log = logging.getLogger(__name__)


class _Writer:
    def __init__(self, final: Path, width: int, height: int) -> None:
        import av

        self.final = final
        self.part = final.with_name(final.stem + ".part" + final.suffix)
        self.container = av.open(str(self.part), "w")
        self.stream = self.container.add_stream("libx264", rate=25)
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p"
        self.stream.codec_context.time_base = Fraction(1, 1000)
        self.stream.options = {"crf": "23", "preset": "veryfast"}
        self.last_pts = -1
        self.frames = 0

    def add(self, picture: np.ndarray, pts_s: float) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
        pts = max(round(pts_s * 1000), self.last_pts + 1)  # strictly increasing, in ms
        frame.pts, frame.time_base = pts, Fraction(1, 1000)
        self.last_pts = pts
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()
        os.replace(self.part, self.final)


class VideoSink(Sink):
    """``video:PATH``: MP4 per stream, mask blended over the frame | depth colour map (see module doc)."""

    wants_images = True  # the pipeline keeps the frame (Result.image) and the mask-sized depth map

    def __init__(self, path: str, cfg: PipelineConfig, metrics: Metrics, labels: dict[int, str],
                 max_side: int = MAX_PANEL_SIDE, **_: Any) -> None:
        super().__init__()
        if not path:
            raise ConfigError("video: sink needs a path, e.g. video:out/ or video:out.mp4")
        self.target = Path(path).expanduser()
        self.single_file = self.target.suffix.lower() in VIDEO_SUFFIXES
        if self.single_file and len(cfg.sources) > 1:
            raise ConfigError(f"video:{path} is one file but there are {len(cfg.sources)} sources: "
                              "use video:DIR for one MP4 per stream")
        self.name = f"video:{self.target}"
        self.cfg = cfg
        self.metrics = metrics
        self.labels = labels
        self.max_side = max_side
        self.show_mask = "segmentation" in cfg.tasks
        self.show_depth = "depth" in cfg.tasks
        self._writers: dict[str, _Writer] = {}
        self._sizes: dict[str, tuple[int, int]] = {}
        # frames_total{stage="published"} belongs to the primary sink; count here only when this is the only one
        self._count = len(cfg.sinks) == 1
        self.files: list[Path] = []

    def open(self) -> None:

        folder = self.target.parent if self.single_file else self.target
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SinkError(f"cannot create output directory {folder} ({e.strerror})") from e

    def describe(self, labels: dict[int, str], models: dict[str, str], zones: ZonePlan | None = None) -> None:
        """Class names for the legend, once the engines are loaded (sinks open before the models)."""
        self.labels = dict(labels)

    def path_for(self, sid: str) -> Path:
        return self.target if self.single_file else self.target / f"{sid}.mp4"

    def write(self, results: list[Result]) -> None:
        import av


        for r in results:
            sid = r.id.stream_id
            try:
                w = self._writers.get(sid)
                if w is None:
                    size = panel_size(r.id.width, r.id.height, self.max_side)
                    halves = int(self.show_mask or r.image is not None) + int(self.show_depth)
                    w = _Writer(self.path_for(sid), size[0] * max(1, halves), size[1])
                    self._writers[sid], self._sizes[sid] = w, size
                zones = [(z.name, z.polygon, z.name in r.active_zones) for z in self.cfg.zones
                         if z.streams is None or sid in z.streams]
                w.add(compose(r, self.labels, self.show_mask, self.show_depth, self._sizes[sid], zones), r.id.pts)
            except (av.FFmpegError, OSError) as e:
                raise SinkError(f"{self.name}: cannot write {self.path_for(sid)} ({e})") from e
            self.published += 1
            self.published_by[sid] += 1
            if self._count:
                self.metrics.frames.labels(stream=sid, stage="published").inc()

    def end_stream(self, eos: EndOfStream) -> None:
        w = self._writers.pop(eos.stream_id, None)
        if w is not None:
            w.close()
            self.files.append(w.final)
            log.info("%s: wrote %s (%d frames)", eos.stream_id, w.final, w.frames)

    def close(self) -> None:
        for sid in list(self._writers):
            self.end_stream(EndOfStream(sid, 0))
