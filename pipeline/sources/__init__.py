"""Sources: one backend per file behind :class:`~pipeline.sources.base.Source` — ``file`` (PyAV demux + decode of a
file, truncation detection) and ``rtsp`` (live cameras with the reconnect logic of ``reconnect``). The runtime
creates them with :func:`create_source`."""

from __future__ import annotations

from typing import Any

from pipeline.config import SourceConfig
from pipeline.metrics import Metrics
from pipeline.queues import NamedQueue
from pipeline.sources.base import Source, SourceError
from pipeline.sources.file import FileSource, probe_file

__all__ = ["FileSource", "Source", "SourceError", "create_source", "probe_file"]


def create_source(cfg: SourceConfig, out: NamedQueue[Any], metrics: Metrics, start_index: int = 0,
                  **live_options: Any) -> Source:
    if cfg.scheme in ("rtsp", "rtsps") or (cfg.is_live and cfg.scheme != "file"):
        from pipeline.sources.rtsp import RtspSource

        return RtspSource(cfg, out, metrics, start_index, **live_options)
    return FileSource(cfg, out, metrics, start_index)
