"""The worker: claims jobs from the consumer group (XAUTOCLAIM for dead workers), runs each, heartbeats, finishes."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from pipeline.config import ConfigError, PipelineConfig, SourceConfig
from pipeline.jobs.keys import REDIS_DOWN, JobKeys
from pipeline.jobs.status import active_workers
from pipeline.jobs.submit import ensure_group

log = logging.getLogger(__name__)

WORKER_NAME_RE = re.compile(r"[A-Za-z0-9._:@-]{1,128}")  # used with fullmatch


# Lua: each state change is one atomic step. Ownership = "this worker holds the job's pending entry".


_OWNER_LUA = """
local function owned(queue, group, entry, me)
  local p = redis.call('XPENDING', queue, group, entry, entry, 1)
  return #p > 0 and p[1][2] == me
end
"""

# KEYS: queue, job hash. ARGV: group, entry, me, then field/value pairs. Refreshes the entry's idle time.
_HEARTBEAT_LUA = _OWNER_LUA + """
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
local f = {}
for i = 4, #ARGV do f[#f + 1] = ARGV[i] end
if #f > 0 then redis.call('HSET', KEYS[2], unpack(f)) end
return 1
"""

# KEYS: queue, job hash. ARGV: group, entry, me, then field/value pairs (state, finished, ...).
_FINISH_LUA = _OWNER_LUA + """
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
local f = {}
for i = 4, #ARGV do f[#f + 1] = ARGV[i] end
redis.call('HSET', KEYS[2], unpack(f))
return 1
"""

# KEYS: queue, job hash. ARGV: group, entry, me, idle ms. Hands the job back: claimable at once.
_RELEASE_LUA = _OWNER_LUA + """
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'IDLE', ARGV[4], 'JUSTID')
redis.call('HSET', KEYS[2], 'state', 'queued')
redis.call('HDEL', KEYS[2], 'worker', 'heartbeat', 'fps')
return 1
"""


@dataclass
class JobOutcome:
    job: str
    state: str  # done, failed, released (handed back unfinished), lost (taken over by another worker)
    frames: int = 0
    new: int = 0  # frames this worker published
    seconds: float = 0.0
    reason: str | None = None


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"[:128]


class Worker:
    """Takes jobs from the queue one at a time and runs each through a :class:`Pipeline` with the engines and
    sinks of ``runtime`` (created once). ``stop`` (SIGTERM) finishes the frames in flight and hands the job
    back, claimable at once by another worker."""

    def __init__(self, cfg: PipelineConfig, runtime: Any, client: Any, name: str | None = None,
                 progress: bool | None = None, max_jobs: int | None = None, until_empty: bool = False,
                 on_event: Callable[[JobOutcome], None] | None = None) -> None:
        from pipeline.sinks import RedisSink

        self.cfg = cfg
        self.rt = runtime
        self.client = client
        self.name = name or default_worker_name()
        if not WORKER_NAME_RE.fullmatch(self.name):
            raise ConfigError(f"invalid worker name {self.name!r}: use 1-128 of A-Z a-z 0-9 . _ : @ -")
        self.keys = JobKeys(cfg.redis.prefix)
        self.group = cfg.jobs.group
        self.claim_idle_ms = int(cfg.jobs.claim_idle_s * 1000)
        self.heartbeat_s = min(cfg.jobs.claim_idle_s / 3.0, 2.0)
        self.progress = progress
        self.max_jobs = max_jobs
        self.until_empty = until_empty
        self.on_event = on_event
        self.stop = threading.Event()
        self.current: Any = None  # the running Pipeline
        self.job: str | None = None
        self.outcomes: list[JobOutcome] = []
        self._last_seen = 0.0
        self._away_delay = 0.0
        sinks = [s for s in runtime.sinks if isinstance(s, RedisSink)]
        if not sinks:
            raise ConfigError("a worker needs a redis:// sink: exactly-once resume keeps its progress there")
        self.sink: RedisSink = sinks[0]
        for s in runtime.sinks:
            if getattr(s, "single_file", False):
                raise ConfigError(f"{s.name} writes one file; a worker runs many jobs: use video:DIR")
        self._heartbeat = client.register_script(_HEARTBEAT_LUA)
        self._finish = client.register_script(_FINISH_LUA)
        self._release = client.register_script(_RELEASE_LUA)

    # -- queue ----------------------------------------------------------------------------------------------
    def _claim_dead(self) -> tuple[str, str] | None:
        """A job whose worker has been silent for ``claim_idle_s`` (``XAUTOCLAIM``), or None."""
        cursor = "0-0"
        while True:
            reply = self.client.xautoclaim(self.keys.queue, self.group, self.name, self.claim_idle_ms,
                                           start_id=cursor, count=1)
            cursor = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
            for eid, fields in reply[1]:
                if fields and b"job" in fields:
                    entry = eid.decode()
                    log.info("took over job %s (its worker was silent for %.0fs)", fields[b"job"].decode(),
                             self.claim_idle_ms / 1000)
                    self._forget_dead()
                    return entry, fields[b"job"].decode()
                self.client.xack(self.keys.queue, self.group, eid)  # a deleted or malformed entry
            if cursor == "0-0":
                return None

    def _read_new(self, block_ms: int | None) -> tuple[str, str] | None:
        reply = self.client.xreadgroup(self.group, self.name, {self.keys.queue: ">"}, count=1, block=block_ms)
        for _stream, entries in reply or []:
            for eid, fields in entries:
                entry = eid.decode()
                if fields and b"job" in fields:
                    return entry, fields[b"job"].decode()
                self.client.xack(self.keys.queue, self.group, entry)
                self.client.xdel(self.keys.queue, entry)
        return None

    def _pending_count(self) -> int:
        info = self.client.xpending(self.keys.queue, self.group)
        return int(info.get("pending", 0)) if isinstance(info, dict) else int(info[0])

    def next_job(self) -> tuple[str, str] | None:
        got = self._claim_dead()
        if got is not None:
            return got
        if self.until_empty:
            got = self._read_new(None)
            if got is None:
                if self._pending_count() == 0:
                    return None
                self.stop.wait(min(self.cfg.jobs.poll_s, 0.5))  # another worker holds a job: it may die
                return ("", "")
            return got
        got = self._read_new(int(self.cfg.jobs.poll_s * 1000))
        return got if got is not None else ("", "")

    # -- main loop --------------------------------------------------------------------------------------------
    def _seen(self) -> None:
        t = time.monotonic()
        if t - self._last_seen >= 1.0:
            self._last_seen = t
            with contextlib.suppress(*REDIS_DOWN):
                self.client.zadd(self.keys.workers, {self.name: time.time()})

    def run(self) -> list[JobOutcome]:
        ensure_group(self.client, self.keys, self.group)
        self.client.xgroup_createconsumer(self.keys.queue, self.group, self.name)
        log.info("worker %s: taking jobs from %s (group %s)", self.name, self.keys.queue, self.group)
        done = 0
        try:
            while not self.stop.is_set():
                if self.max_jobs is not None and done >= self.max_jobs:
                    break
                self._seen()
                if not self._step():
                    break
                done = sum(1 for o in self.outcomes if o.state in ("done", "failed"))
        finally:
            with contextlib.suppress(*REDIS_DOWN):
                self.client.zrem(self.keys.workers, self.name)
        self._forget_self()
        return self.outcomes

    def _step(self) -> bool:
        """Take and process one job. False when the queue is empty in ``until_empty`` mode. While Redis is
        away the worker waits for it (backing off) instead of exiting: a job it held stays pending and is
        claimed again after ``claim_idle_s``."""
        try:
            got = self.next_job()
            if got is not None and got[0]:
                self.job = got[1]
                try:
                    outcome = self.process(*got)
                finally:
                    self.job = None
                if outcome is not None:
                    self.outcomes.append(outcome)
                    if self.on_event is not None:
                        self.on_event(outcome)
                self._redis_back()
                return True
        except REDIS_DOWN as e:
            self._redis_away(e)
            return True
        except redis.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            log.warning("worker %s: the job queue %s or its group is gone (Redis restarted without its data?); "
                        "creating it again", self.name, self.keys.queue)
            ensure_group(self.client, self.keys, self.group)
            self.client.xgroup_createconsumer(self.keys.queue, self.group, self.name)
            return True
        self._redis_back()
        if got is None:
            log.info("worker %s: no jobs left", self.name)
            return False
        return True

    def _redis_away(self, e: Exception) -> None:
        if self._away_delay == 0.0:
            log.warning("worker %s: Redis is unreachable (%s); waiting for it", self.name,
                        str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        self._away_delay = min(max(self._away_delay * 2, 0.2), self.cfg.redis.retry_max_s)
        self.stop.wait(self._away_delay)

    def _redis_back(self) -> None:
        if self._away_delay:
            log.info("worker %s: Redis is back", self.name)
            self._away_delay = 0.0

    def _insist(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, retried while Redis is away, for at most ``claim_idle_s`` (after that the job is claimed
        again by whoever sees it idle, and resumes after its last published frame). None if it gave up."""
        deadline = time.monotonic() + self.cfg.jobs.claim_idle_s
        delay = 0.1
        while True:
            try:
                return fn()
            except REDIS_DOWN as e:
                if time.monotonic() > deadline:
                    log.error("job %s: Redis unreachable, could not %s (%s); the job stays pending", self.job,
                              what, str(e).splitlines()[0] if str(e) else type(e).__name__)
                    return None
                time.sleep(delay)
                delay = min(delay * 2, self.cfg.redis.retry_max_s)

    def _forget_dead(self) -> None:
        """Remove the group's consumers that hold nothing and whose worker has not checked in for twice
        ``claim_idle_s`` (dead workers), so the consumer list does not grow with every restart."""
        try:
            gone_s = 2 * self.claim_idle_ms / 1000
            alive = set(active_workers(self.client, self.keys, gone_s))
            for c in self.client.xinfo_consumers(self.keys.queue, self.group):
                name = c["name"].decode() if isinstance(c["name"], bytes) else str(c["name"])
                if name != self.name and name not in alive and int(c["pending"]) == 0:
                    self.client.xgroup_delconsumer(self.keys.queue, self.group, name)
            self.client.zremrangebyscore(self.keys.workers, "-inf", time.time() - gone_s)
        except Exception:  # tidying only
            log.debug("could not tidy the consumer list", exc_info=True)

    def _forget_self(self) -> None:
        """Leave the group's consumer list tidy when this worker holds nothing."""
        try:
            pending = self.client.xpending_range(self.keys.queue, self.group, "-", "+", 1, consumername=self.name)
            if not pending:
                self.client.xgroup_delconsumer(self.keys.queue, self.group, self.name)
        except Exception:  # tidying only
            log.debug("could not remove consumer %s", self.name, exc_info=True)

    def request_stop(self) -> None:
        self.stop.set()
        p = self.current
        if p is not None:
            p.request_stop()

    # -- one job ------------------------------------------------------------------------------------------
    def _hb_args(self, entry: str, jid: str, fields: dict[str, Any]) -> tuple[list[str], list[Any]]:
        flat: list[Any] = [self.group, entry, self.name]
        for k, v in fields.items():
            flat += [k, v]
        return [self.keys.queue, self.keys.job(jid)], flat

    def _finish_job(self, entry: str, jid: str, state: str, **fields: Any) -> bool:
        keys, args = self._hb_args(entry, jid, {"state": state, "finished": f"{time.time():.3f}", **fields})
        ok = bool(self._insist(f"mark it {state}", lambda: self._finish(keys=keys, args=args)))
        if ok:
            self.rt.metrics.jobs.labels(state=state).inc()
        return ok

    def _release_job(self, entry: str, jid: str) -> None:
        self._insist("hand it back", lambda: self._release(keys=[self.keys.queue, self.keys.job(jid)],
                                                           args=[self.group, entry, self.name, self.claim_idle_ms]))
        self.rt.metrics.jobs.labels(state="released").inc()

    def process(self, entry: str, jid: str) -> JobOutcome | None:
        from pipeline.progress import ProgressView
        from pipeline.runtime import Pipeline, PipelineError
        from pipeline.sources import SourceError, probe_file

        h = {k.decode(): v.decode() for k, v in self.client.hgetall(self.keys.job(jid)).items()}
        if not h or h.get("state") in ("done", "failed") or h.get("entry") not in (None, entry):
            # stale entry (job finished, resubmitted meanwhile, or its hash deleted): drop it
            self.client.xack(self.keys.queue, self.group, entry)
            self.client.xdel(self.keys.queue, entry)
            return None
        attempts = int(self.client.hincrby(self.keys.job(jid), "attempts", 1))
        if attempts > self.cfg.jobs.max_attempts:
            reason = (f"gave up after {attempts - 1} attempts"
                      + (f" (last: {h['error']})" if h.get("error") else " (its workers died or were stopped)"))
            self._finish_job(entry, jid, "failed", error=reason)
            log.error("job %s: %s", jid, reason)
            return JobOutcome(jid, "failed", reason=reason)
        t0 = time.monotonic()
        now = f"{time.time():.3f}"
        if not self._hb(entry, jid, {"state": "running", "worker": self.name, "started": now}):
            return None  # taken over in the meantime
        self.client.hdel(self.keys.job(jid), "error", "note", "fps", "skipped_packets")
        try:
            src = SourceConfig(id=jid, uri=h.get("uri", ""))
            info = probe_file(src)
        except (SourceError, ValueError) as e:
            reason = str(e).splitlines()[0]
            self._finish_job(entry, jid, "failed", error=reason)
            log.error("job %s failed: %s", jid, reason)
            return JobOutcome(jid, "failed", reason=reason)
        total = int(info["frames"] or 0) or None
        if total:
            self.client.hset(self.keys.job(jid), "frames", total)
        cfg = self.cfg.model_copy(update={"sources": [src], "resume": True})
        pipeline = Pipeline(cfg, self.rt.engines, self.rt.sinks, self.rt.metrics, live_options={"live": cfg.live})
        try:
            pipeline.build()  # refuses a resume point recorded for another file under this job id
        except (ConfigError, SourceError) as e:
            reason = str(e).splitlines()[0]
            self._finish_job(entry, jid, "failed", error=reason)
            log.error("job %s failed: %s", jid, reason)
            return JobOutcome(jid, "failed", reason=reason)
        skipped = pipeline.report.streams[jid].skipped
        if skipped:
            log.info("job %s: resuming after frame %d", jid, skipped - 1)
        else:
            log.info("job %s: %s (%s frames)", jid, src.path, total or "?")
        before = self.sink.published
        lost = threading.Event()
        last_hb = [time.monotonic()]
        published0 = skipped

        def tick() -> None:
            view.update()
            t = time.monotonic()
            if t - last_hb[0] < self.heartbeat_s or lost.is_set():
                return
            last_hb[0] = t
            new = self.sink.published - before
            fps = new / max(t - t0, 1e-6)
            try:
                mine = self._hb(entry, jid, {"published": published0 + new, "fps": f"{fps:.2f}"})
            except REDIS_DOWN:
                return  # the sink is waiting for Redis too; the next beat tries again
            self._seen()
            if not mine:
                lost.set()
                log.warning("job %s was taken over by another worker; stopping it here", jid)
                pipeline.request_stop()

        show = self.progress if self.progress is not None else sys.stderr.isatty()
        view = ProgressView(self.rt.metrics, {jid: total}, pipeline.report, enabled=show, log_every=30.0)
        self.current = pipeline
        try:
            if self.stop.is_set():
                pipeline.request_stop()
            with view:
                report = pipeline.run(tick=tick)
        finally:
            self.current = None
            self._forget_series(jid)
        secs = time.monotonic() - t0
        new = self.sink.published - before
        rep = report.streams[jid]
        last = self.sink.last_published(jid)
        decodable = rep.skipped + rep.decoded
        if lost.is_set():
            return JobOutcome(jid, "lost", last + 1, new, secs)
        if report.fatal:
            self._release_job(entry, jid)
            self.client.hset(self.keys.job(jid), "error", report.fatal)
            raise PipelineError(f"job {jid}: {report.fatal} (job handed back to the queue)")
        finished = bool(total) and last + 1 >= (total or 0)  # a stop that came after the last frame
        if (self.stop.is_set() or report.interrupted) and not finished:
            self._release_job(entry, jid)
            log.warning("job %s: stopped after frame %d of %s; handed back to the queue", jid, last, total or "?")
            return JobOutcome(jid, "released", last + 1, new, secs)
        if rep.error:
            self._finish_job(entry, jid, "failed", error=rep.error, published=last + 1)
            log.error("job %s failed: %s", jid, rep.error)
            return JobOutcome(jid, "failed", last + 1, new, secs, rep.error)
        if last + 1 < decodable or decodable == 0:
            reason = ("no frame could be decoded" if decodable == 0
                      else f"only {last + 1} of {decodable} frames reached Redis")
            if decodable == 0:
                self._finish_job(entry, jid, "failed", error=reason)
                log.error("job %s failed: %s", jid, reason)
                return JobOutcome(jid, "failed", 0, new, secs, reason)
            self.client.hset(self.keys.job(jid), "error", reason)
            self._release_job(entry, jid)
            log.warning("job %s: %s; handed back to the queue", jid, reason)
            return JobOutcome(jid, "released", last + 1, new, secs, reason)
        notes = [f"file is truncated: {decodable} of {total} frames decodable" if rep.truncated and total
                 else "file is truncated" if rep.truncated else "",
                 f"skipped {rep.bad_packets} packet(s) that could not be decoded" if rep.bad_packets else ""]
        note = "; ".join(n for n in notes if n)
        fields: dict[str, Any] = {"published": last + 1, "fps": f"{new / max(secs, 1e-6):.2f}",
                                  "skipped_packets": rep.bad_packets}
        if note:
            fields["note"] = note
        if not self._finish_job(entry, jid, "done", **fields):
            log.warning("job %s: finished here, but another worker holds it now", jid)
            return JobOutcome(jid, "lost", last + 1, new, secs)
        log.info("job %s: done, %d frames (%d new) in %.1fs (%.1f frames/s)%s", jid, last + 1, new, secs,
                 new / max(secs, 1e-6), f"; {note}" if note else "")
        return JobOutcome(jid, "done", last + 1, new, secs, note or None)

    def _forget_series(self, jid: str) -> None:
        """Drop the finished job's per-stream series: a worker runs thousands of jobs, and Prometheus should
        not keep a series per file forever. (Counters restart if the same stream is processed again.)"""
        m = self.rt.metrics
        for metric, labels in ((m.queue_depth, (f"decoded:{jid}",)), (m.stream_up, (jid,)), (m.latency, (jid,)),
                               (m.skipped_packets, (jid,)),
                               *((m.frames, (jid, st)) for st in ("decoded", "inferred", "published"))):
            with contextlib.suppress(KeyError):
                metric.remove(*labels)

    def _hb(self, entry: str, jid: str, fields: dict[str, Any]) -> bool:
        keys, args = self._hb_args(entry, jid, {"heartbeat": f"{time.time():.3f}", **fields})
        return bool(self._heartbeat(keys=keys, args=args))
