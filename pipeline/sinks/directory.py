"""``dir:PATH``: one mask PNG per frame (and a 16-bit depth-map PNG with ``redis.depth_map``), one JSON line per
frame."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pipeline.frames import EndOfStream, Result
from pipeline.metrics import Metrics
from pipeline.sinks.base import Sink, SinkError
from pipeline.sinks.encode import encode_depth_png, encode_png, summary


class DirSink(Sink):
    """``dir:PATH``: ``PATH/{stream}/{frame:06d}.png`` masks, ``PATH/{stream}/{frame:06d}.depth.png`` depth maps
    (with ``depth_map``: the Redis entry's ``depth_map`` PNG) and one JSON line per frame in
    ``PATH/{stream}.jsonl``."""

    def __init__(self, path: str, metrics: Metrics, depth_map: bool = False) -> None:
        super().__init__()
        self.root = Path(path).expanduser()
        self.depth_map = depth_map
        self.name = f"dir:{self.root}"
        self.metrics = metrics
        self._files: dict[str, Any] = {}

    def open(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SinkError(f"cannot create output directory {self.root} ({e.strerror})") from e

    def write(self, results: list[Result]) -> None:
        now = time.time()
        for r in results:
            sid = r.id.stream_id
            if sid not in self._files:
                (self.root / sid).mkdir(exist_ok=True)
                self._files[sid] = open(self.root / f"{sid}.jsonl", "a", buffering=1)  # noqa: SIM115
            lat = (now - r.id.wall_time) * 1000.0
            rec = summary(r, lat)
            if r.mask is not None:
                name = f"{sid}/{r.id.index:06d}.png"
                (self.root / name).write_bytes(encode_png(r.mask))
                rec["mask"] = name
            if self.depth_map and r.depth_map is not None and r.depth is not None:
                name = f"{sid}/{r.id.index:06d}.depth.png"
                (self.root / name).write_bytes(encode_depth_png(r.depth_map, r.depth))
                rec["depth_map"] = name
            self._files[sid].write(json.dumps(rec, allow_nan=False) + "\n")
            self.published += 1
            self.published_by[sid] += 1
            self.metrics.frames.labels(stream=sid, stage="published").inc()
            self.metrics.latency.labels(stream=sid).observe(now - r.id.wall_time)

    def end_stream(self, eos: EndOfStream) -> None:
        f = self._files.pop(eos.stream_id, None)
        if f is not None:
            f.close()

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
