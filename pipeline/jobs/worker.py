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

from engines import EngineError
from engines.base import error_reason
from pipeline.config import ConfigError, PipelineConfig, SourceConfig
from pipeline.jobs.keys import REDIS_DOWN, JobKeys
from pipeline.jobs.status import active_workers
from pipeline.jobs.submit import ensure_group
from pipeline.runtime import Pipeline, PipelineError, RunReport
from pipeline.runtime.plan import RunPlan, SourcePlan, plan_source
from pipeline.sinks import ProgressStore, Sink, writes_one_file
from pipeline.sources import SourceError

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

# KEYS: queue, job hash. ARGV: group, entry, me, idle ms, then field/value pairs. Hands the job back: claimable
# at once.
_RELEASE_LUA = _OWNER_LUA + """
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'IDLE', ARGV[4], 'JUSTID')
redis.call('HSET', KEYS[2], 'state', 'queued')
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('HDEL', KEYS[2], 'worker', 'heartbeat', 'fps')
return 1
"""


@dataclass(frozen=True)
class Delivery:
    """One delivery of a job from the queue: the queue entry that carries it and the job id."""

    entry: str
    job: str


@dataclass
class JobOutcome:
    job: str
    state: str  # done, failed, released (handed back unfinished), lost (taken over by another worker)
    frames: int = 0
    new: int = 0  # frames this worker published
    seconds: float = 0.0
    reason: str | None = None


def refuse_one_file_sinks(cfg: PipelineConfig) -> None:
    """A worker runs many jobs: a sink that writes everything to one file cannot serve it (checked from the
    config, so that ``dptstream worker`` says it before the models load)."""
    for uri in cfg.sinks:
        if writes_one_file(uri):
            raise ConfigError(f"{uri} writes one file; a worker runs many jobs: use video:DIR")


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"[:128]


class Worker:
    """Takes jobs from the queue one at a time and runs each through a :class:`Pipeline` with the engines and
    sinks of ``runtime`` (created once). ``stop`` (SIGTERM) finishes the frames in flight and hands the job
    back, claimable at once by another worker."""

    def __init__(self, cfg: PipelineConfig, runtime: Any, client: Any, name: str | None = None,
                 progress: bool | None = None, max_jobs: int | None = None, until_empty: bool = False,
                 on_event: Callable[[JobOutcome], None] | None = None) -> None:
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
        refuse_one_file_sinks(cfg)
        store = runtime.store
        if store is None:
            raise ConfigError("a worker needs a redis:// sink: exactly-once resume keeps its progress there")
        self.store: ProgressStore = store
        self.sink: Sink = next(s for s in runtime.sinks if s.progress_store() is store)
        self._heartbeat = client.register_script(_HEARTBEAT_LUA)
        self._finish = client.register_script(_FINISH_LUA)
        self._release = client.register_script(_RELEASE_LUA)

    # -- queue ----------------------------------------------------------------------------------------------
    def _claim_dead(self) -> Delivery | None:
        """A job whose worker has been silent for ``claim_idle_s`` or handed it back (``XAUTOCLAIM``), or None."""
        cursor = "0-0"
        while True:
            reply = self.client.xautoclaim(self.keys.queue, self.group, self.name, self.claim_idle_ms,
                                           start_id=cursor, count=1)
            cursor = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
            for eid, fields in reply[1]:
                if fields and b"job" in fields:
                    got = Delivery(eid.decode(), fields[b"job"].decode())
                    by = self.client.hget(self.keys.job(got.job), "handed_back")
                    if by is not None:
                        log.info("took job %s (handed back by worker %s)", got.job, by.decode(errors="replace"))
                    else:
                        log.info("took over job %s (its worker was silent for %.0fs)", got.job,
                                 self.claim_idle_ms / 1000)
                    self._forget_dead()
                    return got
                self.client.xack(self.keys.queue, self.group, eid)  # a deleted or malformed entry
            if cursor == "0-0":
                return None

    def _read_new(self, block_ms: int | None) -> Delivery | None:
        reply = self.client.xreadgroup(self.group, self.name, {self.keys.queue: ">"}, count=1, block=block_ms)
        for _stream, entries in reply or []:
            for eid, fields in entries:
                entry = eid.decode()
                if fields and b"job" in fields:
                    return Delivery(entry, fields[b"job"].decode())
                self.client.xack(self.keys.queue, self.group, entry)
                self.client.xdel(self.keys.queue, entry)
        return None

    def _pending_count(self) -> int:
        info = self.client.xpending(self.keys.queue, self.group)
        return int(info.get("pending", 0)) if isinstance(info, dict) else int(info[0])

    def next_job(self) -> Delivery | None:
        """The next job: one handed back or whose worker went silent, else a new one (waiting up to
        ``jobs.poll_s`` for it; with ``until_empty`` not at all). None when there is none right now."""
        got = self._claim_dead()
        if got is not None:
            return got
        return self._read_new(None if self.until_empty else int(self.cfg.jobs.poll_s * 1000))

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
            if got is None:
                if self.until_empty and self._pending_count() == 0:
                    self._redis_back()
                    log.info("worker %s: no jobs left", self.name)
                    return False
                if self.until_empty:
                    self.stop.wait(min(self.cfg.jobs.poll_s, 0.5))  # another worker holds a job: it may die
                self._redis_back()
                return True
            self.job = got.job
            try:
                outcome = self.process(got)
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

    def _redis_away(self, e: Exception) -> None:
        if self._away_delay == 0.0:
            log.warning("worker %s: Redis is unreachable (%s); waiting for it", self.name,
                        error_reason(e))
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
                              what, error_reason(e))
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
    def _hb_args(self, d: Delivery, fields: dict[str, Any]) -> tuple[list[str], list[Any]]:
        flat: list[Any] = [self.group, d.entry, self.name]
        for k, v in fields.items():
            flat += [k, v]
        return [self.keys.queue, self.keys.job(d.job)], flat

    def _finish_job(self, d: Delivery, state: str, **fields: Any) -> bool:
        keys, args = self._hb_args(d, {"state": state, "finished": f"{time.time():.3f}", **fields})
        ok = bool(self._insist(f"mark it {state}", lambda: self._finish(keys=keys, args=args)))
        if ok:
            self.rt.metrics.jobs.labels(state=state).inc()
        return ok

    def _release_job(self, d: Delivery, graceful: bool = False) -> None:
        """Hand the job back, claimable at once. ``graceful``: this worker was stopped (a scale-down, a rolling
        update), which is not a failed attempt of the job."""
        extra = ["handed_back", self.name] if graceful else []
        self._insist("hand it back", lambda: self._release(
            keys=[self.keys.queue, self.keys.job(d.job)],
            args=[self.group, d.entry, self.name, self.claim_idle_ms, *extra]))
        self.rt.metrics.jobs.labels(state="released").inc()

    def _fail(self, d: Delivery, reason: str, frames: int = 0, new: int = 0, seconds: float = 0.0,
              **fields: Any) -> JobOutcome:
        """Mark the job failed with ``reason`` (its one line), log it."""
        self._finish_job(d, "failed", error=reason, **fields)
        log.error("job %s failed: %s", d.job, reason)
        return JobOutcome(d.job, "failed", frames, new, seconds, reason)

    def _stale(self, d: Delivery, h: dict[str, str]) -> bool:
        """Whether ``d`` no longer carries a job to run (finished, resubmitted meanwhile, or its hash deleted);
        such an entry is dropped from the queue."""
        if h and h.get("state") not in ("done", "failed") and h.get("entry") in (None, d.entry):
            return False
        self.client.xack(self.keys.queue, self.group, d.entry)
        self.client.xdel(self.keys.queue, d.entry)
        return True

    def _count_attempt(self, d: Delivery, h: dict[str, str]) -> str | None:
        """Count this delivery; the reason to give the job up when ``jobs.max_attempts`` earlier attempts ended
        without progress. An attempt that published frames, or that its worker handed back when stopped, does
        not count: rolling restarts never fail a job that moves."""
        key = self.keys.job(d.job)
        attempts = int(self.client.hincrby(key, "attempts", 1))
        try:
            last = self.store.last_published(d.job)
        except ConfigError:  # a corrupt resume point: planning the job says so
            last = -1
        forgiven = int(h.get("forgiven") or 0)
        moved = last > int(h.get("from_frame") or -1)
        if attempts > 1 and (h.get("handed_back") or moved):
            forgiven = int(self.client.hincrby(key, "forgiven", 1))
        self.client.hset(key, "from_frame", last)
        self.client.hdel(key, "handed_back")
        failed = attempts - 1 - forgiven
        if failed < self.cfg.jobs.max_attempts:
            return None
        last_error = h.get("error")
        return f"gave up after {failed} attempts" + (
            f" (last: {last_error})" if last_error else " (its workers died or stopped without progress)")

    def process(self, d: Delivery) -> JobOutcome | None:
        """Run one delivered job to its end: done, failed, handed back (released), or lost to another worker.
        None when the delivery was stale or taken over before it started."""
        h = {k.decode(): v.decode() for k, v in self.client.hgetall(self.keys.job(d.job)).items()}
        if self._stale(d, h):
            return None
        give_up = self._count_attempt(d, h)
        if give_up is not None:
            return self._fail(d, give_up)
        if not self._hb(d, {"state": "running", "worker": self.name, "started": f"{time.time():.3f}"}):
            return None  # taken over in the meantime
        self.client.hdel(self.keys.job(d.job), "error", "note", "fps", "skipped_packets")
        try:
            plan = self._plan(d, h.get("uri", ""))
            if plan.total_frames:
                self.client.hset(self.keys.job(d.job), "frames", plan.total_frames)
            # building refuses a network shape the device has no memory for (engines.memory): that file fails,
            # the next may fit
            run = _JobRun(self, d, plan)
        except (ConfigError, SourceError, EngineError, ValueError) as e:
            return self._fail(d, error_reason(e))
        if plan.start_frame:
            log.info("job %s: resuming after frame %d", d.job, plan.start_frame - 1)
        else:
            log.info("job %s: %s (%s frames)", d.job, plan.source.path, plan.total_frames or "?")
        self.current = run.pipeline
        try:
            if self.stop.is_set():
                run.pipeline.request_stop()
            report = run.run()
        finally:
            self.current = None
            self._forget_series(d.job)
        return self._outcome(d, plan, run, report)

    def _plan(self, d: Delivery, uri: str) -> SourcePlan:
        """The job's file, probed once; a resume point recorded for another file under this job id is refused."""
        cfg = self.cfg.model_copy(update={"resume": True})
        return plan_source(cfg, SourceConfig(id=d.job, uri=uri), self.rt.engines, self.store, record=True)

    def _outcome(self, d: Delivery, plan: SourcePlan, run: _JobRun, report: RunReport) -> JobOutcome:
        jid = d.job
        secs = time.monotonic() - run.t0
        new = run.new
        rep = report.streams[jid]
        last = self.store.last_published(jid)
        decodable = rep.skipped + rep.decoded
        total = plan.total_frames
        if run.lost.is_set():
            return JobOutcome(jid, "lost", last + 1, new, secs)
        if report.fatal:
            self._release_job(d)
            self.client.hset(self.keys.job(jid), "error", report.fatal)
            raise PipelineError(f"job {jid}: {report.fatal} (job handed back to the queue)")
        finished = bool(total) and last + 1 >= (total or 0)  # a stop that came after the last frame
        if (self.stop.is_set() or report.interrupted) and not finished:
            self._release_job(d, graceful=True)
            log.warning("job %s: stopped after frame %d of %s; handed back to the queue", jid, last, total or "?")
            return JobOutcome(jid, "released", last + 1, new, secs)
        if rep.error:
            return self._fail(d, rep.error, last + 1, new, secs, published=last + 1)
        if decodable == 0:
            return self._fail(d, "no frame could be decoded", 0, new, secs)
        if last + 1 < decodable:
            reason = f"only {last + 1} of {decodable} frames reached Redis"
            self.client.hset(self.keys.job(jid), "error", reason)
            self._release_job(d)
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
        if not self._finish_job(d, "done", **fields):
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

    def _hb(self, d: Delivery, fields: dict[str, Any]) -> bool:
        keys, args = self._hb_args(d, {"heartbeat": f"{time.time():.3f}", **fields})
        return bool(self._heartbeat(keys=keys, args=args))


class _JobRun:
    """One job's pipeline, with the heartbeat its wait loop beats: progress to the job hash every
    ``heartbeat_s``; a job taken over by another worker (its entry no longer ours) is stopped here."""

    def __init__(self, worker: Worker, d: Delivery, plan: SourcePlan) -> None:
        from pipeline.progress import ProgressView

        w = worker
        self.w, self.d, self.plan = w, d, plan
        cfg = w.cfg.model_copy(update={"sources": [plan.source], "resume": True})
        self.pipeline = Pipeline(cfg, w.rt.engines, w.rt.sinks, w.rt.metrics, RunPlan(w.rt.zones, (plan,)))
        self.pipeline.build()
        self.lost = threading.Event()
        self.t0 = self.last_beat = time.monotonic()
        self.before = w.sink.published
        show = w.progress if w.progress is not None else sys.stderr.isatty()
        self.view = ProgressView(w.rt.metrics, {d.job: plan.total_frames}, self.pipeline.report, enabled=show,
                                 log_every=30.0)

    @property
    def new(self) -> int:
        """Frames this run published."""
        return self.w.sink.published - self.before

    def run(self) -> RunReport:
        with self.view:
            return self.pipeline.run(tick=self.tick)

    def tick(self) -> None:
        self.view.update()
        t = time.monotonic()
        if t - self.last_beat < self.w.heartbeat_s or self.lost.is_set():
            return
        self.last_beat = t
        fps = self.new / max(t - self.t0, 1e-6)
        try:
            mine = self.w._hb(self.d, {"published": self.plan.start_frame + self.new, "fps": f"{fps:.2f}"})
        except REDIS_DOWN:
            return  # the sink is waiting for Redis too; the next beat tries again
        self.w._seen()
        if not mine:
            self.lost.set()
            log.warning("job %s was taken over by another worker; stopping it here", self.d.job)
            self.pipeline.request_stop()
