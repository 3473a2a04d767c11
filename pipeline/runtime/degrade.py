"""Latency budget for live sources: degrade in a configured order instead of building a backlog.

Each live stream has its own :class:`StreamDegrader`. It watches the end-to-end latency (decode ->
publish) of that stream's published frames and moves between levels::

    none -> rate -> skip_depth -> alternate_segmentation      (the order is ``live.degrade_order``)

Level *k* applies the first *k* actions of the order, cumulatively:

* ``rate``: keep one frame in ``live.degrade_rate_divisor`` (the others are dropped before preprocessing);
* ``skip_depth``: run segmentation only;
* ``alternate_segmentation``: run segmentation on every other kept frame.

A frame left with no task is dropped. Every drop is counted in
``dptstream_frames_dropped_total{reason="degraded"}`` and the level is exported as
``dptstream_degraded{stream,level}`` (1 for the current level, 0 for the others).

Going up: more than half of the frames published in the last ``hold`` seconds (and decoded after the
last change, which is at least ``hold`` old so that its effect had time to show) are over the budget. Going down: latency stayed
under half the budget for ``live.degrade_recover_s`` and the busiest stage would stay under 80 % busy
with the extra work (its busy fraction comes from ``dptstream_stage_seconds``; undoing ``rate`` multiplies
this stream's share of the work by the divisor, undoing the others by about 2). A level undone and
re-entered soon after doubles that wait (up to a minute), so a load right at the edge does not flap.

The controller is wired into the runtime through two hooks: :meth:`DegradeController.select_tasks`
(the preprocess stage asks which tasks to run for a frame) and :meth:`DegradeController.write` (the
publish stage hands it every published batch after the real sinks, like a sink that only watches).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pipeline.config import LiveSection, SourceConfig
from pipeline.frames import Frame, Result
from pipeline.metrics import Metrics
from pipeline.sinks import Sink

log = logging.getLogger(__name__)

NONE = "none"
MIN_SAMPLES = 3
MAX_BUSY = 0.8  # a level is undone only if the busiest stage would stay under this busy fraction
BUSY_WINDOW_S = 3.0
MAX_RECOVER_S = 60.0


class StreamDegrader:
    """The level of one stream and the latency evidence behind it (thread-safe)."""

    def __init__(self, stream: str, budget_s: float, order: Sequence[str], tasks: Sequence[str],
                 divisor: int = 2, recover_s: float = 5.0, hold_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 on_level: Callable[[str, str, str], None] | None = None,
                 headroom: Callable[[str, str], float | None] | None = None) -> None:
        self.stream = stream
        self.budget = budget_s
        self.levels: tuple[str, ...] = (NONE, *order)
        self.tasks = tuple(tasks)
        self.divisor = divisor
        self.base_recover = recover_s
        self.recover_s = recover_s
        self.hold = hold_s if hold_s is not None else max(1.0, 4.0 * budget_s)
        self.clock = clock
        self.wall = wall
        self.on_level = on_level
        self.headroom = headroom  # (stream, action) -> predicted busy fraction once the action is undone
        self.level = 0
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, float]] = deque(maxlen=1024)  # (time, latency) since the last change
        self._changed = clock()
        self._changed_wall = wall()  # frames decoded before the last change say nothing about it
        self._last_high = clock()  # last time latency was not comfortably under the budget
        self._last_down = -1e9
        self._arrivals = 0
        self._kept = 0

    @property
    def name(self) -> str:
        return self.levels[self.level]

    def active(self, action: str) -> bool:
        return action in self.levels[1 : self.level + 1]

    # -- decisions --------------------------------------------------------------------------------------
    def observe(self, latency_s: float, decoded_at: float | None = None) -> None:
        with self._lock:
            now = self.clock()
            if decoded_at is not None and decoded_at < self._changed_wall:
                self._decide(now)
                return
            self._samples.append((now, latency_s))
            if latency_s >= 0.5 * self.budget:
                self._last_high = now
            self._decide(now)

    def tick(self) -> None:
        with self._lock:
            self._decide(self.clock())

    def _decide(self, now: float) -> None:
        while self._samples and self._samples[0][0] < now - self.hold:
            self._samples.popleft()
        if len(self._samples) >= MIN_SAMPLES and now - self._changed >= self.hold:
            late = sum(1 for _, lat in self._samples if lat > self.budget)
            if 2 * late > len(self._samples) and self.level < len(self.levels) - 1:
                if now - self._last_down < 2 * self.recover_s:  # undone too early: wait longer next time
                    self.recover_s = min(self.recover_s * 2, MAX_RECOVER_S)
                median = sorted(lat for _, lat in self._samples)[len(self._samples) // 2]
                self._set(self.level + 1, now, f"median latency {median * 1000:.0f} ms over the "
                          f"{self.budget * 1000:.0f} ms budget")
                return
        calm = min(now - self._last_high, now - self._changed)
        if self.level > 0 and calm >= self.recover_s:
            busy = self.headroom(self.stream, self.name) if self.headroom is not None else None
            if busy is not None and busy > MAX_BUSY:
                return  # latency is fine only thanks to this level: undoing it would overload
            self._last_down = now
            self._set(self.level - 1, now,
                      f"latency under {self.budget * 500:.0f} ms for {self.recover_s:.0f}s")
            return
        if self.level == 0 and now - self._changed >= 4 * MAX_RECOVER_S:
            self.recover_s = self.base_recover  # calm for a long while: forget past flapping

    def _set(self, level: int, now: float, why: str) -> None:
        old = self.name
        self.level = level
        self._changed = now
        self._changed_wall = self.wall()
        self._last_high = now
        self._samples.clear()
        if self.on_level is not None:
            self.on_level(self.stream, old, self.name)
        log.warning("stream %s: %s -> %s (%s)", self.stream, old, self.name, why)

    # -- admission ----------------------------------------------------------------------------------
    def select(self) -> tuple[str, ...]:
        """Tasks to run for the next arriving frame (empty: drop it)."""
        with self._lock:
            self._arrivals += 1
            if self.active("rate") and (self._arrivals - 1) % self.divisor:
                return ()
            self._kept += 1
            tasks = self.tasks
            if self.active("skip_depth"):
                tasks = tuple(t for t in tasks if t != "depth")
            if self.active("alternate_segmentation") and self._kept % 2 == 0:
                tasks = tuple(t for t in tasks if t != "segmentation")
            return tasks


def applicable(order: Iterable[str], tasks: Sequence[str]) -> tuple[str, ...]:
    """The actions of ``order`` that change anything for ``tasks`` (e.g. no ``skip_depth`` without depth)."""
    keep = {"rate": True, "skip_depth": "depth" in tasks and len(tasks) > 1,
            "alternate_segmentation": "segmentation" in tasks}
    return tuple(a for a in dict.fromkeys(order) if keep.get(a, False))


class DegradeController(Sink):
    """Owns one :class:`StreamDegrader` per live stream; plugs into the preprocess and publish stages."""

    name = "degrade"

    def __init__(self, live: LiveSection, tasks: Sequence[str], live_streams: Iterable[str], metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.metrics = metrics
        self.tasks = tuple(tasks)
        self.live = live
        self.order = applicable(live.degrade_order, self.tasks)
        self.streams: dict[str, StreamDegrader] = {}
        self._dropped: dict[str, Any] = {}
        self.clock = clock
        self.wall = wall
        self.divisor = live.degrade_rate_divisor
        for sid in live_streams:
            self._add(sid)
        self._busy_lock = threading.Lock()
        self._busy: deque[tuple[float, dict[str, float]]] = deque()  # (time, busy seconds per stage)
        self._published: deque[tuple[float, str]] = deque(maxlen=4096)  # recent (time, stream) of results
        # busy fraction promised to streams that just undid a level, until the measurement shows it: without
        # it, cameras sharing one bottleneck would all recover at once and overload it together
        self._reserved: deque[tuple[float, float]] = deque()
        self._extra: dict[str, float] = {}  # the last predicted extra busy fraction per stream

    def _add(self, sid: str) -> None:
        live = self.live
        d = StreamDegrader(sid, live.latency_budget_ms / 1000.0, self.order, self.tasks, live.degrade_rate_divisor,
                           live.degrade_recover_s, clock=self.clock, wall=self.wall, on_level=self._exported,
                           headroom=self.predicted_busy)
        self.streams[sid] = d
        for level in d.levels:
            self.metrics.degraded.labels(stream=sid, level=level).set(1 if level == NONE else 0)
        self._dropped[sid] = self.metrics.dropped.labels(stream=sid, reason="degraded")

    def begin_stream(self, source: SourceConfig) -> None:
        """A live stream that joins a running pipeline gets its own degrader."""
        if source.is_live and source.id not in self.streams:
            self._add(source.id)

    # -- how busy the pipeline is: the stages' own busy time (dptstream_stage_seconds) ---------------------
    def _sample_busy(self) -> None:
        now = self.clock()
        with self._busy_lock:
            if self._busy and now - self._busy[-1][0] < 0.25:
                return
            sums: dict[str, float] = {}
            for fam in self.metrics.stage_seconds.collect():
                for s in fam.samples:
                    if s.name.endswith("_sum"):
                        sums[s.labels.get("stage", "")] = s.value
            self._busy.append((now, sums))
            while len(self._busy) > 2 and self._busy[1][0] <= now - BUSY_WINDOW_S:
                self._busy.popleft()

    def busy(self) -> float | None:
        """Busy fraction of the busiest stage over the last few seconds (None until measured)."""
        with self._busy_lock:
            if len(self._busy) < 2 or self._busy[-1][0] - self._busy[0][0] < 1.0:
                return None
            (t0, a), (t1, b) = self._busy[0], self._busy[-1]
        return max((b.get(k, 0.0) - a.get(k, 0.0)) / (t1 - t0) for k in b) if b else 0.0

    def predicted_busy(self, stream: str, action: str) -> float | None:
        """The busiest stage's busy fraction if ``stream`` undid ``action`` (None: no measurement yet)."""
        u = self.busy()
        if u is None:
            return None
        now = self.clock()
        recent = [sid for t, sid in list(self._published) if t >= now - BUSY_WINDOW_S]
        share = recent.count(stream) / len(recent) if recent else 1.0
        factor = float(self.divisor) if action == "rate" else 2.0
        extra = u * (factor - 1.0) * share
        with self._busy_lock:
            while self._reserved and self._reserved[0][0] < now - BUSY_WINDOW_S:
                self._reserved.popleft()
            reserved = sum(e for _, e in self._reserved)
            self._extra[stream] = extra
        return u + reserved + extra

    def _exported(self, stream: str, old: str, new: str) -> None:
        self.metrics.degraded.labels(stream=stream, level=old).set(0)
        self.metrics.degraded.labels(stream=stream, level=new).set(1)
        levels = self.streams[stream].levels if stream in self.streams else (NONE, *self.order)
        if levels.index(new) < levels.index(old):  # a level undone: reserve the work it brings back
            with self._busy_lock:
                self._reserved.append((self.clock(), self._extra.pop(stream, 0.0)))

    def level(self, stream: str) -> str:
        d = self.streams.get(stream)
        return d.name if d is not None else NONE

    # PreprocessStage hook
    def select_tasks(self, frame: Frame) -> tuple[str, ...]:
        d = self.streams.get(frame.id.stream_id)
        if d is None:
            return self.tasks
        self._sample_busy()
        d.tick()
        tasks = d.select()
        if not tasks:
            self._dropped[frame.id.stream_id].inc()
        return tasks

    # a sink to the publish stage, which calls write() after the real sinks
    def write(self, results: list[Result]) -> None:
        now = self.wall()
        mono = self.clock()
        for r in results:
            self._published.append((mono, r.id.stream_id))
            d = self.streams.get(r.id.stream_id)
            if d is not None:
                d.observe(now - r.id.wall_time, r.id.wall_time)

    def levels(self) -> dict[str, str]:
        return {sid: d.name for sid, d in self.streams.items()}
