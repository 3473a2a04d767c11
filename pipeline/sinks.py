"""Sinks: Redis (the DESIGN.md schema), ``dir:PATH``. Created from a URI by :func:`create_sink`."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from pipeline.config import ConfigError, PipelineConfig, redact
from pipeline.frames import EndOfStream, Result
from pipeline.metrics import Metrics

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"


class SinkError(Exception):
    """A sink that cannot be used at all (e.g. Redis unreachable at start)."""


class Sink(Protocol):
    name: str

    def open(self) -> None: ...

    def write(self, results: list[Result]) -> None: ...

    def end_stream(self, eos: EndOfStream) -> None: ...

    def close(self) -> None: ...


def encode_png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask, mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def summary(r: Result, latency_ms: float) -> dict[str, Any]:
    """The entry's fields without the mask (what light subscribers get)."""
    out: dict[str, Any] = {
        "stream": r.id.stream_id, "frame": r.id.index, "pts": round(r.id.pts, 6), "ts": round(r.id.wall_time, 6),
        "latency_ms": round(latency_ms, 3),
    }
    if r.mask is not None:
        out["mask_w"], out["mask_h"] = int(r.mask.shape[1]), int(r.mask.shape[0])
        out["classes"] = {str(k): v for k, v in r.classes.items()}
    if r.depth is not None:
        out["depth"] = r.depth
    return out


# XADD only frames newer than the stream's progress marker: writes are idempotent per frame, so a resumed
# or retried job never publishes a frame twice. KEYS: stream, progress hash, streams set.
# ARGV: stream id, frame, maxlen, channel ('' = none), event JSON, then field/value pairs.
_PUBLISH_LUA = """
local frame = tonumber(ARGV[2])
local last = tonumber(redis.call('HGET', KEYS[2], 'frame') or '-1')
if frame <= last then return 0 end
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', unpack(fields))
redis.call('HSET', KEYS[2], 'frame', frame, 'id', id)
redis.call('SADD', KEYS[3], ARGV[1])
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 1
"""


class RedisKeys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.meta = f"{prefix}:meta"
        self.streams = f"{prefix}:streams"

    def frames(self, sid: str) -> str:
        return f"{self.prefix}:stream:{sid}:frames"

    def events(self, sid: str) -> str:
        return f"{self.prefix}:stream:{sid}:events"

    def progress(self, sid: str) -> str:
        return f"{self.prefix}:stream:{sid}:progress"


def redis_client(url: str, ca_file: str | None = None, timeout: float = 5.0) -> Any:
    import redis

    parts = urlsplit(url)
    kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                              "health_check_interval": 30}
    if parts.scheme == "rediss" and ca_file:
        kwargs["ssl_ca_certs"] = ca_file
    password = os.environ.get("REDIS_PASSWORD")
    if password and not parts.password:
        kwargs["password"] = password
    return redis.Redis.from_url(url, **kwargs)


class RedisSink:
    """Writes per the Redis contract with pipelined round trips.

    File jobs (``block``): a failed write is retried with backoff until it succeeds (backpressure pauses the
    pipeline, nothing is lost). Live sources: results wait in a bounded buffer while Redis is away; past the
    bound the oldest are dropped and counted.
    """

    def __init__(self, url: str, cfg: PipelineConfig, metrics: Metrics, labels: dict[int, str],
                 models: dict[str, str], stop: threading.Event | None = None) -> None:
        self.url = url
        self.name = redact(url)
        self.cfg = cfg
        self.keys = RedisKeys(cfg.redis.prefix)
        self.metrics = metrics
        self.labels = labels
        self.models = models
        self._stop = stop or threading.Event()
        self._errors = metrics.sink_errors.labels(sink=urlsplit(url).scheme)
        self._buffer_gauge = metrics.sink_buffer.labels(sink=urlsplit(url).scheme)
        self._client: Any = None
        self._script: Any = None
        self._pending: list[Result] = []  # live results held while Redis is away
        self._live = {s.id for s in cfg.sources if s.is_live}
        self.published = 0
        self.duplicates = 0

    def open(self) -> None:
        import redis

        self._client = redis_client(self.url, self.cfg.redis.ca_file)
        try:
            self._client.ping()
        except redis.AuthenticationError as e:
            raise SinkError(f"Redis at {self.name} refused the credentials ({e})") from e
        except redis.RedisError as e:
            raise SinkError(f"cannot reach Redis at {self.name} ({_reason(e)}); is redis-server running?") from e
        self._script = self._client.register_script(_PUBLISH_LUA)
        self._write_meta()

    def _write_meta(self) -> None:
        self._client.hset(self.keys.meta, mapping={
            "schema": SCHEMA_VERSION,
            "labels": json.dumps({str(k): v for k, v in sorted(self.labels.items())}),
            "models": json.dumps(self.models),
        })

    def last_published(self, sid: str) -> int:
        """Index of the last frame of ``sid`` already in Redis, or -1."""
        v = self._client.hget(self.keys.progress(sid), "frame")
        return int(v) if v is not None else -1

    def reset_progress(self, sid: str) -> None:
        self._client.hdel(self.keys.progress(sid), "frame")

    def _fields(self, r: Result, latency_ms: float) -> list[Any]:
        f: list[Any] = ["frame", r.id.index, "pts", repr(round(r.id.pts, 6)), "ts", repr(round(r.id.wall_time, 6))]
        if r.mask is not None:
            f += ["mask", encode_png(r.mask), "mask_w", r.mask.shape[1], "mask_h", r.mask.shape[0],
                  "classes", json.dumps({str(k): v for k, v in r.classes.items()})]
        if r.depth is not None:
            f += ["depth", json.dumps(r.depth)]
        f += ["latency_ms", f"{latency_ms:.3f}"]
        return f

    def write(self, results: list[Result]) -> None:
        import redis

        batch = self._pending + results
        self._pending = []
        delay = 0.05
        while batch:
            now = time.time()
            try:
                pipe = self._client.pipeline(transaction=False)
                for r in batch:
                    lat = (now - r.id.wall_time) * 1000.0
                    sid = r.id.stream_id
                    channel = self.keys.events(sid) if self.cfg.redis.events else ""
                    event = json.dumps(summary(r, lat)) if channel else ""
                    self._script(
                        keys=[self.keys.frames(sid), self.keys.progress(sid), self.keys.streams],
                        args=[sid, r.id.index, self.cfg.redis.maxlen, channel, event, *self._fields(r, lat)],
                        client=pipe,
                    )
                replies = pipe.execute()
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError) as e:
                self._errors.inc()
                if all(r.id.stream_id in self._live for r in batch):
                    self._hold(batch, e)
                    return
                if self._stop.is_set() and delay >= self.cfg.redis.retry_max_s:
                    raise SinkError(f"Redis at {self.name} is unreachable ({_reason(e)}); "
                                    f"{len(batch)} results not written") from e
                log.warning("Redis at %s: %s; retrying in %.1fs", self.name, _reason(e), delay)
                time.sleep(delay)
                delay = min(delay * 2, self.cfg.redis.retry_max_s)
                continue
            for r, ok in zip(batch, replies, strict=True):
                if ok:
                    self.published += 1
                    self.metrics.frames.labels(stream=r.id.stream_id, stage="published").inc()
                    self.metrics.latency.labels(stream=r.id.stream_id).observe(now - r.id.wall_time)
                else:
                    self.duplicates += 1
            self._buffer_gauge.set(0)
            return

    def _hold(self, batch: list[Result], e: Exception) -> None:
        limit = self.cfg.redis.buffer
        if len(batch) > limit:
            for r in batch[: len(batch) - limit]:
                self.metrics.dropped.labels(stream=r.id.stream_id, reason="sink_buffer_full").inc()
            batch = batch[len(batch) - limit :]
        if not self._pending:
            log.warning("Redis at %s is away (%s); holding up to %d live results", self.name, _reason(e), limit)
        self._pending = batch
        self._buffer_gauge.set(len(batch))
        time.sleep(0.05)

    def end_stream(self, eos: EndOfStream) -> None:
        if self._pending:
            self.write([])

    def close(self) -> None:
        if self._pending:
            try:
                self.write([])
            except Exception as e:  # noqa: BLE001 - already counted; report and go on closing
                log.error("Redis at %s: %d held results not written (%s)", self.name, len(self._pending), e)
        if self._client is not None:
            self._client.close()


class DirSink:
    """``dir:PATH``: ``PATH/{stream}/{frame:06d}.png`` masks and one JSON line per frame in ``PATH/{stream}.jsonl``."""

    def __init__(self, path: str, metrics: Metrics) -> None:
        self.root = Path(path).expanduser()
        self.name = f"dir:{self.root}"
        self.metrics = metrics
        self._files: dict[str, Any] = {}
        self.published = 0

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
            self._files[sid].write(json.dumps(rec) + "\n")
            self.published += 1
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


def _reason(e: Exception) -> str:
    s = str(e).strip() or type(e).__name__
    return s.splitlines()[0]


def create_sink(uri: str, cfg: PipelineConfig, metrics: Metrics, labels: dict[int, str], models: dict[str, str],
                stop: threading.Event | None = None, **extra: Any) -> Sink:
    scheme = uri.split(":", 1)[0].lower()
    if scheme in ("redis", "rediss"):
        return RedisSink(uri, cfg, metrics, labels, models, stop)
    if scheme == "dir":
        path = uri[4:].removeprefix("//")
        if not path:
            raise ConfigError("dir: sink needs a path, e.g. dir:out/")
        return DirSink(path, metrics)
    if scheme == "video":
        from pipeline.overlay import VideoSink

        return VideoSink(uri[6:].removeprefix("//"), cfg, metrics, labels, **extra)  # type: ignore[no-any-return]
    raise ConfigError(f"unknown sink scheme {scheme!r}: use redis://, rediss://, dir:PATH or video:PATH")
