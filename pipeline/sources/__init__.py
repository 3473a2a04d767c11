"""Sources: one backend per file behind :class:`~pipeline.sources.base.Source` — ``file`` (PyAV demux + decode of a
file, truncation detection, display rotation, identity for resume) and ``live`` (live network streams: rtsp(s),
http(s) incl. HLS, rtmp(s), with the reconnect logic of ``reconnect``). The runtime
creates them with :func:`create_source`."""

from __future__ import annotations

from typing import Any

from pipeline.config import LiveSection, SourceConfig
from pipeline.metrics import Metrics
from pipeline.queues import NamedQueue
from pipeline.sources.base import Source, SourceError
from pipeline.sources.file import FileFacts, FileSource, SourceIdentity, inspect_file, probe_file, source_identity

__all__ = ["FileFacts", "FileSource", "Source", "SourceError", "SourceIdentity", "create_source", "inspect_file",
           "probe_file", "source_identity"]


def create_source(cfg: SourceConfig, out: NamedQueue[Any], metrics: Metrics, start_index: int = 0,
                  live: LiveSection | None = None) -> Source:
    """The source for ``cfg``; ``live`` (the config's ``live`` section) tunes a live stream's reconnects."""
    if cfg.scheme != "file":  # every network scheme is a live stream (config validation says so)
        from pipeline.sources.live import LiveSource

        return LiveSource(cfg, out, metrics, start_index, live=live)
    return FileSource(cfg, out, metrics, start_index)
