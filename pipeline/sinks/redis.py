"""The Redis sink: writes each frame's entry, its resume point and its rule events in one Lua call per frame,
pipelined; the key names and client it shares with the readers are in :mod:`pipeline.sinks.rediskeys`."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from engines.base import error_reason
from pipeline.config import PipelineConfig, SourceConfig
from pipeline.frames import EndOfStream, Result, mask_dtype_for
from pipeline.metrics import Metrics
from pipeline.redact import redact
from pipeline.sinks.base import ProgressStore, SavedProgress, Sink, SinkError
from pipeline.sinks.encode import encode_depth_png, encode_png, encode_thumbnail, summary
from pipeline.sinks.rediskeys import (
    SCHEMA_VERSION,
    RedisKeys,
    key_problem,
    parse_resume_point,
    redis_client,
    redis_down,
)
from pipeline.zones import RuleError, ZonePlan, alert_fields, resolve

log = logging.getLogger(__name__)

_PROGRESS_OWN = ("frame", "id", "rules", "ended")  # the progress hash's own fields; the rest is the source identity


# XADD only frames newer than the stream's progress marker: writes are idempotent per frame, so a resumed
# or retried job never publishes a frame twice. The rule events a frame caused and the stream's rule state go in
# the same call, so they are written exactly when the frame is.
# A fleet node's frame carries its camera's fencing token: a token that is not the camera's current one (the
# camera moved to another node while this one was paused) is refused (-1), before anything is written.
# KEYS: stream, progress hash, streams set, alerts stream, active-alerts hash, fence hash.
# ARGV: 1 stream id, 2 frame, 3 maxlen, 4 channel ('' = none), 5 event JSON, 6 rule state ('' = none),
#       7 alerts JSON ('' = none: [{key, state, json, fields}]), 8 alerts channel, 9 alerts maxlen,
#       10 fencing token ('' = not fenced), then field/value pairs.
_PUBLISH_LUA = """
if ARGV[10] ~= '' and redis.call('HGET', KEYS[6], ARGV[1]) ~= ARGV[10] then return -1 end
local frame = tonumber(ARGV[2])
local last = tonumber(redis.call('HGET', KEYS[2], 'frame') or '-1')
if last == nil then return redis.error_reply('CORRUPT progress frame is not a frame index') end
if frame <= last then return 0 end
local fields = {}
for i = 11, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', unpack(fields))
redis.call('HSET', KEYS[2], 'frame', frame, 'id', id)
if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], 'rules', ARGV[6]) end
redis.call('SADD', KEYS[3], ARGV[1])
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
if ARGV[7] ~= '' then
  for _, a in ipairs(cjson.decode(ARGV[7])) do
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[9], '*', unpack(a.fields))
    if a.state == 'start' then redis.call('HSET', KEYS[5], a.key, a.json) else redis.call('HDEL', KEYS[5], a.key) end
    redis.call('PUBLISH', ARGV[8], a.json)
  end
end
return 1
"""

# A stream's end ends its active rules: written once per end (the stored rule state moves with it, so a rerun
# that resumes after it has nothing left to end). KEYS: progress hash, alerts stream, active-alerts hash.
# ARGV: 1 last frame, 2 rule state, 3 alerts JSON, 4 alerts channel, 5 alerts maxlen.
_END_LUA = """
local last = redis.call('HGET', KEYS[1], 'ended')
if last == ARGV[1] then return 0 end
for _, a in ipairs(cjson.decode(ARGV[3])) do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', unpack(a.fields))
  redis.call('HDEL', KEYS[3], a.key)
  redis.call('PUBLISH', ARGV[4], a.json)
end
redis.call('HSET', KEYS[1], 'rules', ARGV[2], 'ended', ARGV[1])
return 1
"""

# Starting a stream afresh (live camera, --no-resume): forget its resume point and rule state, and end the
# rules a previous run left active (reason "restart"), so {prefix}:alerts:active never keeps a stale one.
# KEYS: progress hash, alerts stream, active-alerts hash. ARGV: 1 stream id, 2 alerts channel, 3 alerts maxlen.
_RESET_LUA = """
local frame = redis.call('HGET', KEYS[1], 'frame') or '-1'
redis.call('HDEL', KEYS[1], 'frame', 'rules', 'ended')
local prefix = ARGV[1] .. '/'
local all = redis.call('HGETALL', KEYS[3])
local t = redis.call('TIME')
local ts = string.format('%d.%06d', tonumber(t[1]), tonumber(t[2]))
local n = 0
for i = 1, #all, 2 do
  if string.sub(all[i], 1, #prefix) == prefix then
    local start = cjson.decode(all[i + 1])
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'rule', start.rule, 'zone', start.zone,
               'stream', ARGV[1], 'state', 'end', 'frame', frame, 'ts', ts, 'reason', 'restart')
    redis.call('PUBLISH', ARGV[2], cjson.encode({rule = start.rule, zone = start.zone, stream = ARGV[1],
               state = 'end', frame = tonumber(frame), ts = tonumber(ts), reason = 'restart'}))
    redis.call('HDEL', KEYS[3], all[i])
    n = n + 1
  end
end
return n
"""


class RedisSink(Sink, ProgressStore):
    """Writes per the Redis contract with pipelined round trips.

    File jobs (``block``): a failed write is retried with backoff until it succeeds (backpressure pauses the
    pipeline, nothing is lost). Live sources: results wait in a bounded buffer while Redis is away; past the
    bound the oldest are dropped and counted.
    """

    def __init__(self, url: str, cfg: PipelineConfig, metrics: Metrics, labels: dict[int, str] | None = None,
                 models: dict[str, str] | None = None, stop: threading.Event | None = None) -> None:
        super().__init__()
        self.url = url
        self.name = redact(url)
        self.cfg = cfg
        self.keys = RedisKeys(cfg.redis.prefix)
        self.metrics = metrics
        self.labels = labels or {}
        self.models = models or {}
        self.zones: ZonePlan | None = None
        self._stop = stop or threading.Event()
        self._abandon = threading.Event()  # set by a second stop signal: give up a waiting write at once
        self._errors = metrics.sink_errors.labels(sink=urlsplit(url).scheme)
        self._buffer_gauge = metrics.sink_buffer.labels(sink=urlsplit(url).scheme)
        self._client: Any = None
        self._script: Any = None
        self._pending: list[Result] = []  # live results held while Redis is away (oldest first)
        self._down_since: float | None = None  # monotonic time of the first failed write of an outage
        self._delay = 0.0  # current retry delay (exponential, capped at redis.retry_max_s)
        self._next_try = 0.0  # live results are not retried before this (monotonic)
        self._probe: Any = None  # short-timeout client for the readiness probe
        self._probe_at = -1e9
        self._probe_ok = False
        self._live = {s.id for s in cfg.sources if s.is_live}
        self._refused_streams: set[str] = set()  # live streams whose writes Redis refused (warned once)
        self.duplicates = 0
        self.wants_images = cfg.redis.thumbnail > 0  # the pipeline keeps the frame for the JPEG thumbnail
        self._fences: dict[str, tuple[int, str]] = {}  # fleet streams: stream id -> (fencing token, node id)
        self._fence_warned: dict[str, int] = {}  # the stale token each stream was last warned about

    def open(self) -> None:
        import redis

        rc = self.cfg.redis
        self._client = redis_client(self.url, rc.ca_file, cert_file=rc.cert_file, key_file=rc.key_file)
        try:
            self._client.ping()
        except redis.AuthenticationError as e:
            raise SinkError(f"Redis at {self.name} refused the credentials ({e})") from e
        except redis.RedisError as e:
            raise SinkError(f"cannot reach Redis at {self.name} ({error_reason(e)}); is redis-server running?") from e
        self._script = self._client.register_script(_PUBLISH_LUA)
        self._end_script = self._client.register_script(_END_LUA)
        self._reset_script = self._client.register_script(_RESET_LUA)

    def describe(self, labels: dict[int, str], models: dict[str, str], zones: ZonePlan | None = None) -> None:
        """Write ``{prefix}:meta`` once the engines are loaded (``zones``: the run's resolved zones; without, the
        config's are resolved against ``labels``)."""
        self.labels, self.models = labels, models
        if zones is None:
            try:
                zones = resolve(self.cfg.zones, self.cfg.rules, labels)
            except RuleError as e:
                raise SinkError(str(e)) from e
        self.zones = zones
        self._call("writing the labels", {self.keys.meta: "hash"}, self._client.hset, self.keys.meta, mapping={
            "schema": SCHEMA_VERSION,
            "labels": json.dumps({str(k): v for k, v in sorted(self.labels.items())}),
            "models": json.dumps(self.models),
            **zones.meta(),
            "mask_dtype": mask_dtype_for(max(self.labels, default=-1) + 1),  # uint8, or uint16 past 256 classes
        })

    def _call(self, what: str, kinds: dict[str, str], fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``; a Redis error reply (a wrong-typed key) is a :class:`SinkError` naming it."""
        import redis

        try:
            return fn(*args, **kwargs)
        except redis.ResponseError as e:
            raise SinkError(key_problem(self._client, e, kinds, what)) from e

    def _progress_types(self, sid: str) -> dict[str, str]:
        return {self.keys.progress(sid): "hash"}

    def last_published(self, sid: str) -> int:
        """Index of the last frame of ``sid`` already in Redis, or -1. A ``frame`` that is not an integer is a
        corrupt resume point: :class:`~pipeline.config.ConfigError` naming the key and the way out."""
        v = self._call(f"reading the resume point of stream {sid!r}", self._progress_types(sid), self._client.hget,
                       self.keys.progress(sid), "frame")
        if v is None:
            return -1
        return parse_resume_point(self.keys.progress(sid), v.decode(errors="replace") if isinstance(v, bytes) else v)

    def rule_state(self, sid: str) -> str | None:
        """The stream's rule debounce state stored with its last published frame (JSON), or None."""
        v = self._call(f"reading the rule state of stream {sid!r}", self._progress_types(sid), self._client.hget,
                       self.keys.progress(sid), "rules")
        return v.decode() if isinstance(v, bytes) else v

    def reset_progress(self, sid: str, fields: tuple[str, ...] = ()) -> None:
        """Start ``sid`` afresh: no resume point, no rule state; rules a previous run left active end. ``fields``
        (the source identity recorded with the resume point) are removed too."""
        kinds = {self.keys.progress(sid): "hash", self.keys.alerts: "stream", self.keys.alerts_active: "hash"}
        what = f"resetting the resume point of stream {sid!r}"
        n = self._call(what, kinds, self._reset_script,
                       keys=[self.keys.progress(sid), self.keys.alerts, self.keys.alerts_active],
                       args=[sid, self.keys.alerts, self.cfg.redis.alerts_maxlen])
        if fields:
            self._call(what, kinds, self._client.hdel, self.keys.progress(sid), *fields)
        if n:
            log.info("%s: ended %d rule(s) a previous run left active", sid, n)

    def _alerts_arg(self, events: tuple[dict[str, Any], ...]) -> str:
        if not events:
            return ""
        return json.dumps([{"key": f"{ev['stream']}/{ev['rule']}", "state": ev["state"], "json": json.dumps(ev),
                            "fields": alert_fields(ev)} for ev in events])

    def progress_fields(self, sid: str) -> dict[str, str]:
        """Everything in ``{prefix}:stream:{sid}:progress``: the resume point and the source identity."""
        raw = self._call(f"reading the resume point of stream {sid!r}", self._progress_types(sid), self._client.hgetall,
                         self.keys.progress(sid))
        return {k.decode(): v.decode(errors="replace") for k, v in raw.items()}

    def saved_progress(self, sid: str) -> SavedProgress:
        """The resume point, the recorded source identity and the rule state of ``sid``, in one read. A ``frame``
        that is not an integer is a corrupt resume point (:class:`~pipeline.config.ConfigError`)."""
        f = self.progress_fields(sid)
        last = parse_resume_point(self.keys.progress(sid), f["frame"]) if "frame" in f else -1
        identity = {k: v for k, v in f.items() if k not in _PROGRESS_OWN}
        return SavedProgress(last, identity, f.get("rules") or None)

    def progress_store(self) -> ProgressStore:
        return self

    def begin_stream(self, source: SourceConfig) -> None:
        if source.is_live:  # its results wait in the bounded buffer during an outage instead of blocking
            self._live.add(source.id)

    def record_source(self, sid: str, fields: dict[str, str]) -> None:
        """Record which source the resume point of ``sid`` belongs to (next to ``frame`` / ``id``)."""
        self._call(f"recording the source of stream {sid!r}", self._progress_types(sid), self._client.hset,
                   self.keys.progress(sid), mapping=fields)

    def request_stop(self) -> None:
        """The run is stopping: a write that fails keeps retrying for at most ``redis.retry_max_s`` more."""
        self._stop.set()

    def abandon(self) -> None:
        """The run is quitting at once: a write waiting for Redis gives up now."""
        self._abandon.set()
        self._stop.set()

    def fence(self, sid: str, token: int, node: str) -> None:
        """Write ``sid`` as fleet node ``node`` holding fencing token ``token``: from now on its frames carry the
        token (and ``node`` and ``fence`` fields), and Redis refuses them once the camera has a newer token. Kept after the
        camera is let go, so that what is still in flight is refused too."""
        self._fences[sid] = (token, node)

    def _fields(self, r: Result, latency_ms: float) -> list[Any]:
        f: list[Any] = ["frame", r.id.index, "pts", repr(round(r.id.pts, 6)), "ts", repr(round(r.id.wall_time, 6))]
        if r.mask is not None:
            f += ["mask", encode_png(r.mask), "mask_w", r.mask.shape[1], "mask_h", r.mask.shape[0],
                  "classes", json.dumps({str(k): v for k, v in r.classes.items()}, allow_nan=False)]
        if r.depth is not None:
            f += ["depth", json.dumps(r.depth, allow_nan=False)]
            if self.cfg.redis.depth_map and r.depth_map is not None:
                f += ["depth_map", encode_depth_png(r.depth_map, r.depth)]
        if r.zones is not None:
            f += ["zones", json.dumps(r.zones, allow_nan=False)]
        if r.image is not None and self.cfg.redis.thumbnail:
            f += ["thumb", encode_thumbnail(r.image, self.cfg.redis.thumbnail)]
        f += ["latency_ms", f"{latency_ms:.3f}"]
        fenced = self._fences.get(r.id.stream_id)
        if fenced is not None:
            f += ["node", fenced[1], "fence", fenced[0]]
        return f

    def write(self, results: list[Result]) -> None:
        """Publish ``results`` (idempotent per frame, so a retried round trip never writes a frame twice).

        Results of file jobs are retried with backoff until Redis takes them: this call waits, so the
        pipeline pauses behind it and nothing is lost. Results of live sources go through a bounded
        buffer: while Redis is away they are held (past ``redis.buffer`` the oldest are dropped and
        counted as ``sink_buffer_full``), retried with the same backoff, and written in order when it is back.
        """
        files = [r for r in results if r.id.stream_id not in self._live]
        live = [r for r in results if r.id.stream_id in self._live] if len(files) != len(results) else []
        self._pending.extend(live)
        if self._pending and (files or self._down_since is None or time.monotonic() >= self._next_try):
            self._flush_held()
        if files:
            self._write_blocking(files)
            if self._pending:
                self._flush_held()
        if self._down_since is not None:
            self._trim()
        self._buffer_gauge.set(len(self._pending))

    def _trim(self) -> None:
        excess = len(self._pending) - self.cfg.redis.buffer
        if excess > 0:
            for r in self._pending[:excess]:
                self.metrics.dropped.labels(stream=r.id.stream_id, reason="sink_buffer_full").inc()
            del self._pending[:excess]

    def _flush_held(self) -> None:
        batch, self._pending = self._pending, []
        if not self._attempt(batch):
            self._pending = batch + self._pending

    def _write_blocking(self, batch: list[Result]) -> None:
        """Retry until Redis takes ``batch``; once a stop is requested, for at most ``redis.retry_max_s`` more."""
        give_up: float | None = None
        while not self._attempt(batch):
            now = time.monotonic()
            if self._abandon.is_set():
                raise SinkError(f"Redis at {self.name} is unreachable; writing abandoned by a second stop signal")
            if self._stop.is_set():
                if give_up is None:
                    give_up = now + self.cfg.redis.retry_max_s
                if now >= give_up:
                    raise SinkError(f"Redis at {self.name} is unreachable; gave up writing after the stop "
                                    f"request (redis.retry_max_s {self.cfg.redis.retry_max_s:g}s)")
            delay = max(self._next_try - now, 0.0)
            if give_up is not None:
                delay = min(delay, max(give_up - now, 0.0))
            if give_up is None:
                self._stop.wait(delay)  # a stop request ends the wait: its deadline starts now
            else:
                self._abandon.wait(delay)

    def _attempt(self, batch: list[Result]) -> bool:
        """One pipelined round trip for ``batch``. False (counted, backoff scheduled) when Redis is away."""
        import redis

        retried = self._down_since is not None
        now = time.time()
        try:
            pipe = self._client.pipeline(transaction=False)
            for r in batch:
                lat = (now - r.id.wall_time) * 1000.0
                sid = r.id.stream_id
                channel = self.keys.events(sid) if self.cfg.redis.events else ""
                event = json.dumps(summary(r, lat), allow_nan=False) if channel else ""
                fenced = self._fences.get(sid)
                self._script(
                    keys=[self.keys.frames(sid), self.keys.progress(sid), self.keys.streams, self.keys.alerts,
                          self.keys.alerts_active, self.keys.fence],
                    args=[sid, r.id.index, self.cfg.redis.maxlen, channel, event, r.rule_state or "",
                          self._alerts_arg(r.alerts), self.keys.alerts, self.cfg.redis.alerts_maxlen,
                          fenced[0] if fenced is not None else "", *self._fields(r, lat)],
                    client=pipe,
                )
            replies = pipe.execute(raise_on_error=False)
        except redis_down() as e:
            self._errors.inc()
            self._went_down(e)
            return False
        self._came_back()
        refused: str | None = None
        applied: dict[str, int] = {}
        for r, ok in zip(batch, replies, strict=True):
            if isinstance(ok, redis.ResponseError):
                refused = refused or self._refused(r, ok)
                # a script stopped by an error keeps what it wrote before it (an ACL that refuses the PUBLISH
                # after the frame's XADD): such a frame is in Redis, and counts as written
                sid = r.id.stream_id
                if sid not in applied:
                    applied[sid] = self._applied_frame(sid)
                if r.id.index > applied[sid]:
                    continue
            elif ok == -1:  # fenced: the camera belongs to another node now
                self._fenced(r)
                continue
            # after a failed round trip, a frame already applied by it is ours, written once
            if ok or retried or isinstance(ok, redis.ResponseError):
                self.published += 1
                self.published_by[r.id.stream_id] += 1
                self.metrics.frames.labels(stream=r.id.stream_id, stage="published").inc()
                self.metrics.latency.labels(stream=r.id.stream_id).observe(now - r.id.wall_time)
            else:
                self.duplicates += 1
        if refused is not None:
            raise SinkError(refused)
        return True

    def _fenced(self, r: Result) -> None:
        sid = r.id.stream_id
        self.metrics.dropped.labels(stream=sid, reason="fenced").inc()
        token = self._fences.get(sid, (0, ""))[0]
        if self._fence_warned.get(sid) != token:
            self._fence_warned[sid] = token
            log.warning("%s: another node holds the camera now (token %d is stale); dropping this node's frames",
                        sid, token)

    def _applied_frame(self, sid: str) -> int:
        """The last frame of ``sid`` Redis holds (its progress hash), or -1 when that cannot be read."""
        try:
            v = self._client.hget(self.keys.progress(sid), "frame")
            return int(v) if v is not None else -1
        except Exception:  # refused or unreadable too: nothing is counted as written
            return -1

    def _refused(self, r: Result, e: Exception) -> str | None:
        """A frame Redis answered with an error (a wrong-typed key, a corrupt progress hash): counted; a live
        stream's frame is dropped (one warning per stream), a file stream's is the run's end (its line)."""
        sid = r.id.stream_id
        self._errors.inc()
        kinds = self.keys.expected_types(sid)
        if sid not in self._live:
            return key_problem(self._client, e, kinds, f"writing stream {sid!r}")
        self.metrics.dropped.labels(stream=sid, reason="sink_error").inc()
        if sid not in self._refused_streams:
            self._refused_streams.add(sid)
            log.warning("%s; dropping the stream's frames meanwhile",
                        key_problem(self._client, e, kinds, f"writing stream {sid!r}"))
        return None

    def _went_down(self, e: Exception) -> None:
        self._delay = min(max(self._delay * 2, 0.05), self.cfg.redis.retry_max_s)
        self._next_try = time.monotonic() + self._delay
        self._probe_ok = False
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("Redis at %s is unreachable (%s): retrying with backoff up to %.1fs; file results "
                        "wait, live results are held (up to %d)", self.name, error_reason(e),
                        self.cfg.redis.retry_max_s, self.cfg.redis.buffer)
        else:
            log.debug("Redis at %s still unreachable (%s); next try in %.2fs", self.name, error_reason(e),
                      self._delay)

    def _came_back(self) -> None:
        if self._down_since is None:
            return
        log.warning("Redis at %s is back after %.1fs", self.name, time.monotonic() - self._down_since)
        self._down_since = None
        self._delay = 0.0
        self._buffer_gauge.set(0)
        if self.labels or self.models:  # a restarted Redis may have lost {prefix}:meta
            try:
                self.describe(self.labels, self.models, self.zones)
            except Exception as e:  # the next write will see the next outage
                log.debug("Redis at %s: rewriting meta failed (%s)", self.name, error_reason(e))

    def reachable(self) -> bool:
        """For ``/readyz``: False during an outage seen by writes, else a 1 s ping (cached for a second)."""
        if self._down_since is not None:
            return False
        now = time.monotonic()
        if now - self._probe_at < 1.0:
            return self._probe_ok
        try:
            if self._probe is None:
                rc = self.cfg.redis
                self._probe = redis_client(self.url, rc.ca_file, 1.0, rc.cert_file, rc.key_file)
            self._probe_ok = bool(self._probe.ping())
        except Exception:  # any failure means not reachable
            self._probe_ok = False
        self._probe_at = now
        return self._probe_ok

    @property
    def held(self) -> int:
        return len(self._pending)

    def end_stream(self, eos: EndOfStream) -> None:
        if self._pending:
            self._flush_held()
        if eos.rule_state is not None and eos.alerts:
            self._end_rules(eos)

    def _end_rules(self, eos: EndOfStream) -> None:
        """Write the rule ends of a stream's end (once: a rerun finds nothing left active)."""
        import redis

        frame = eos.alerts[0]["frame"]
        args = [frame, eos.rule_state, self._alerts_arg(eos.alerts), self.keys.alerts, self.cfg.redis.alerts_maxlen]
        keys = [self.keys.progress(eos.stream_id), self.keys.alerts, self.keys.alerts_active]
        deadline = time.monotonic() + self.cfg.redis.retry_max_s * 4
        while True:
            try:
                self._end_script(keys=keys, args=args)
                return
            except redis_down() as e:
                self._errors.inc()
                if time.monotonic() >= deadline or self._stop.is_set():
                    log.error("Redis at %s: %s's rule ends not written (%s)", self.name, eos.stream_id,
                              error_reason(e))
                    return
                time.sleep(min(self.cfg.redis.retry_max_s, 0.5))
            except redis.ResponseError as e:  # after redis_down(): a read-only replica is away, not refusing
                self._errors.inc()
                msg = key_problem(self._client, e, self.keys.expected_types(eos.stream_id),
                                  f"ending the rules of stream {eos.stream_id!r}")
                if eos.stream_id not in self._live:
                    raise SinkError(msg) from e
                log.warning("%s", msg)
                return

    def close(self) -> None:
        if self._pending:
            self._flush_held()  # one last try, whatever the backoff says
            if self._pending:
                log.error("Redis at %s: %d held live results not written (Redis unreachable at exit)",
                          self.name, len(self._pending))
                for r in self._pending:
                    self.metrics.dropped.labels(stream=r.id.stream_id, reason="sink_unavailable").inc()
                self._pending = []
        for c in (self._client, self._probe):
            if c is not None:
                c.close()
