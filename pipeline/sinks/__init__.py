"""Sinks: one backend per file behind the :class:`~pipeline.sinks.base.Sink` base (every hook declared, with a
default) — ``redis`` (streams, resume point: its :class:`~pipeline.sinks.base.ProgressStore`, outage buffer) over
``rediskeys`` (the key names and client its readers share), ``directory`` (``dir:`` mask PNGs + JSON lines),
``video`` (``video:`` overlay MP4); ``encode`` holds the PNG/JPEG/summary encoding they share. The runtime creates
them with :func:`create_sink`."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from engines.base import error_reason
from pipeline.config import ConfigError, PipelineConfig
from pipeline.metrics import Metrics
from pipeline.overlay import VIDEO_SUFFIXES
from pipeline.sinks.base import ProgressStore, SavedProgress, Sink, SinkError
from pipeline.sinks.directory import DirSink
from pipeline.sinks.redis import RedisSink
from pipeline.sinks.rediskeys import (
    SCHEMA_VERSION,
    WAY_OUT,
    RedisKeys,
    key_problem,
    key_type,
    parse_resume_point,
    redis_client,
    redis_down,
)

__all__ = ["SCHEMA_VERSION", "WAY_OUT", "DirSink", "ProgressStore", "RedisKeys", "RedisSink", "SavedProgress", "Sink",
           "SinkError", "create_sink", "error_reason", "key_problem", "key_type", "parse_resume_point", "redis_client",
           "redis_down", "writes_one_file"]


def writes_one_file(uri: str) -> bool:
    """Whether the sink of ``uri`` writes every stream into one file (``video:out.mp4``)."""
    scheme, _, rest = uri.partition(":")
    return scheme.lower() == "video" and Path(rest.removeprefix("//")).suffix.lower() in VIDEO_SUFFIXES


def create_sink(uri: str, cfg: PipelineConfig, metrics: Metrics, labels: dict[int, str] | None = None,
                models: dict[str, str] | None = None,
                stop: threading.Event | None = None, **extra: Any) -> Sink:
    scheme = uri.split(":", 1)[0].lower()
    if scheme in ("redis", "rediss"):
        return RedisSink(uri, cfg, metrics, labels, models, stop)
    if scheme == "dir":
        path = uri[4:].removeprefix("//")
        if not path:
            raise ConfigError("dir: sink needs a path, e.g. dir:out/")
        return DirSink(path, metrics, depth_map=cfg.redis.depth_map)
    if scheme == "video":
        from pipeline.sinks.video import VideoSink

        return VideoSink(uri[6:].removeprefix("//"), cfg, metrics, labels or {}, **extra)
    raise ConfigError(f"unknown sink scheme {scheme!r}: use redis://, rediss://, dir:PATH or video:PATH")
