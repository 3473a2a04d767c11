"""Reading job and worker state for ``dptstream status``."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from pipeline.jobs.keys import JobKeys


@dataclass
class JobInfo:
    id: str
    uri: str
    state: str
    frames: int | None  # the file's frame count (known once a worker opened it)
    published: int  # frames of the stream in Redis (last published index + 1)
    attempts: int
    worker: str | None
    fps: float | None
    error: str | None
    note: str | None
    submitted: float | None
    started: float | None
    finished: float | None
    heartbeat: float | None
    stale: bool  # running, but its worker has not been heard from for claim_idle_s

    @property
    def eta_s(self) -> float | None:
        if self.state != "running" or not self.fps or not self.frames:
            return None
        return max(0.0, (self.frames - self.published) / self.fps)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["eta_s"] = self.eta_s
        return d


def _f(v: bytes | None) -> float | None:
    """A number field, or None when it is absent, empty, not a number or not finite (a hand-edited hash)."""
    try:
        x = float(v) if v not in (None, b"") else None  # type: ignore[arg-type]
    except ValueError:
        return None
    return x if x is not None and math.isfinite(x) else None


def job_status(client: Any, keys: JobKeys, ids: list[str] | None = None, claim_idle_s: float = 60.0,
               problems: list[str] | None = None) -> list[JobInfo]:
    """Every job (submit order), or ``ids``, with its state and per-job progress from Redis. A key that cannot be
    read (another program's key of the wrong type, an index member that is no job id, a corrupt progress
    marker) is left out and named in one line appended to ``problems``; the other jobs are read all the same."""
    import redis

    from pipeline.config import ConfigError
    from pipeline.frames import valid_stream_id
    from pipeline.redact import printable
    from pipeline.sinks import key_problem, parse_resume_point

    problems = problems if problems is not None else []
    if ids is None:
        try:
            members = client.zrange(keys.index, 0, -1)
        except redis.ResponseError as e:
            problems.append(key_problem(client, e, {keys.index: "zset"}, "listing the jobs"))
            return []
        ids = []
        for raw in members:
            jid = raw.decode("utf-8", "backslashreplace")
            if valid_stream_id(jid):
                ids.append(jid)
            else:
                problems.append(f"Redis key {keys.index} lists '{printable(jid[:80], lines=False)}', which is no "
                                f"job id: ZREM it from {keys.index}")
    pipe = client.pipeline(transaction=False)
    for jid in ids:
        pipe.hgetall(keys.job(jid))
        pipe.hget(keys.progress(jid), "frame")
    replies = pipe.execute(raise_on_error=False)
    now = time.time()
    out: list[JobInfo] = []
    for k, jid in enumerate(ids):
        h, last = replies[2 * k], replies[2 * k + 1]
        failed = next((r for r in (h, last) if isinstance(r, Exception)), None)
        if failed is not None:
            kinds = {keys.job(jid): "hash", keys.progress(jid): "hash"}
            problems.append(f"job {jid!r}: " + key_problem(client, failed, kinds, "reading it"))
            continue
        if not h:
            continue
        try:
            published = parse_resume_point(keys.progress(jid), last.decode("utf-8", "backslashreplace")) + 1 \
                if last is not None else 0
        except ConfigError as e:
            problems.append(f"job {jid!r}: {e}")
            continue

        def s(name: str, h: dict[bytes, bytes] = h) -> str | None:
            v = h.get(name.encode())
            return v.decode("utf-8", "backslashreplace") if v not in (None, b"") else None

        state = s("state") or "queued"
        hb = _f(h.get(b"heartbeat"))
        frames = _f(h.get(b"frames"))
        out.append(JobInfo(
            id=jid, uri=s("uri") or "", state=state, frames=int(frames) if frames else None,
            published=published, attempts=int(_f(h.get(b"attempts")) or 0),
            worker=s("worker"), fps=_f(h.get(b"fps")), error=s("error"), note=s("note"),
            submitted=_f(h.get(b"submitted")), started=_f(h.get(b"started")), finished=_f(h.get(b"finished")),
            heartbeat=hb, stale=state == "running" and (hb is None or now - hb > claim_idle_s),
        ))
    return out


def active_workers(client: Any, keys: JobKeys, within_s: float) -> list[str]:
    """Workers heard from in the last ``within_s`` seconds (a worker checks in every poll and heartbeat;
    the group's consumer idle times cannot tell: a blocked read does not refresh them on Redis 7.0)."""
    return [x.decode() for x in client.zrangebyscore(keys.workers, time.time() - within_s, "+inf")]
