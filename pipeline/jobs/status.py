"""Reading job and worker state for ``dptstream status``."""

from __future__ import annotations

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
    try:
        return float(v) if v not in (None, b"") else None  # type: ignore[arg-type]
    except ValueError:
        return None


def job_status(client: Any, keys: JobKeys, ids: list[str] | None = None,
               claim_idle_s: float = 60.0) -> list[JobInfo]:
    """Every job (submit order), or ``ids``, with its state and per-job progress from Redis."""
    if ids is None:
        ids = [x.decode() for x in client.zrange(keys.index, 0, -1)]
    pipe = client.pipeline(transaction=False)
    for jid in ids:
        pipe.hgetall(keys.job(jid))
        pipe.hget(keys.progress(jid), "frame")
    replies = pipe.execute()
    now = time.time()
    out: list[JobInfo] = []
    for k, jid in enumerate(ids):
        h: dict[bytes, bytes] = replies[2 * k]
        last = replies[2 * k + 1]
        if not h:
            continue

        def s(name: str, h: dict[bytes, bytes] = h) -> str | None:
            v = h.get(name.encode())
            return v.decode() if v not in (None, b"") else None

        state = s("state") or "queued"
        hb = _f(h.get(b"heartbeat"))
        frames = _f(h.get(b"frames"))
        out.append(JobInfo(
            id=jid, uri=s("uri") or "", state=state, frames=int(frames) if frames else None,
            published=int(last) + 1 if last is not None else 0, attempts=int(_f(h.get(b"attempts")) or 0),
            worker=s("worker"), fps=_f(h.get(b"fps")), error=s("error"), note=s("note"),
            submitted=_f(h.get(b"submitted")), started=_f(h.get(b"started")), finished=_f(h.get(b"finished")),
            heartbeat=hb, stale=state == "running" and (hb is None or now - hb > claim_idle_s),
        ))
    return out


def active_workers(client: Any, keys: JobKeys, within_s: float) -> list[str]:
    """Workers heard from in the last ``within_s`` seconds (a worker checks in every poll and heartbeat;
    the group's consumer idle times cannot tell: a blocked read does not refresh them on Redis 7.0)."""
    return [x.decode() for x in client.zrangebyscore(keys.workers, time.time() - within_s, "+inf")]
