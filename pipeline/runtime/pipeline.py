"""Wires sources, stages, queues and sinks from a run plan; runs until every source ends or a stop is requested.
Sources can join and leave while it runs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engines import Engine
from pipeline.config import PipelineConfig
from pipeline.frames import EndOfStream, Frame
from pipeline.metrics import Metrics
from pipeline.queues import FanIn, NamedQueue
from pipeline.runtime.plan import RunPlan, SourcePlan, find_progress_store, plan_run
from pipeline.sinks import Sink, error_reason
from pipeline.sources import Source, create_source
from pipeline.stages import InferStage, PostprocessStage, PreprocessStage, PublishStage, Stage, is_control

log = logging.getLogger(__name__)


class PipelineError(Exception):
    """A fatal error inside the running pipeline (dead engine, sink gone for good); one line for the user."""


@dataclass
class StreamReport:
    stream_id: str
    decoded: int = 0
    skipped: int = 0  # already published before (resume)
    error: str | None = None
    truncated: bool = False
    bad_packets: int = 0  # packets skipped because they could not be decoded
    done: bool = False


@dataclass
class RunReport:
    streams: dict[str, StreamReport] = field(default_factory=dict)
    published: int = 0
    seconds: float = 0.0
    fatal: str | None = None
    interrupted: bool = False
    unwritten: int = 0  # decoded frames no sink wrote (a stop while Redis was down)

    @property
    def failed(self) -> list[StreamReport]:
        return [s for s in self.streams.values() if s.error]


class Pipeline:
    """One run with already-created engines and sinks (both reusable across runs), over ``plan``: its sources'
    plans (:func:`~pipeline.runtime.plan.plan_source`) and the resolved zones; without one, :meth:`build` plans
    ``cfg.sources`` itself, recording them in the progress store. More sources join a running pipeline with
    :meth:`add_source` and leave it with :meth:`remove_source`; with ``hold_open`` the run does not end when its
    last source ends, only on :meth:`request_stop` (a fleet whose cameras come and go)."""

    def __init__(self, cfg: PipelineConfig, engines: dict[str, Engine], sinks: Sequence[Sink], metrics: Metrics,
                 plan: RunPlan | None = None, select_tasks: Callable[[Frame], tuple[str, ...]] | None = None,
                 hold_open: bool = False) -> None:
        self.cfg = cfg
        self.engines = engines
        self.sinks = list(sinks)
        self.metrics = metrics
        self.plan = plan
        self.select_tasks = select_tasks
        self.hold_open = hold_open
        self.degrade: Any = None  # the latency-budget controller, when live.latency_budget_ms is set
        self.abort = threading.Event()
        self.stopping = threading.Event()
        self.report = RunReport()
        self._fatal: str | None = None
        self.sources: list[Source] = []  # every source of the run, including those that ended or left
        self.stages: list[Stage] = []
        self.queues: dict[str, NamedQueue[Any]] = {}
        self._fan: FanIn[Any] = FanIn()
        self._reading: dict[str, Source] = {}  # stream id -> its source, until its end marker passes
        self._removed: set[str] = set()  # stream ids taken out with remove_source (their end is not the file's)
        self._handed_over: set[str] = set()  # removed to continue elsewhere: their ends keep their rules going
        self._gone: list[Source] = []  # the sources taken out (health no longer asks about them)
        self._pre: PreprocessStage | None = None
        self._plans: dict[str, SourcePlan] = {}
        self._lock = threading.Lock()
        self._started = False
        self._t0 = time.monotonic()

    # -- wiring -----------------------------------------------------------------------------------------
    def _queue(self, name: str, size: int, policy: Any = "block") -> NamedQueue[Any]:
        q: NamedQueue[Any] = NamedQueue(name, size, policy, on_drop=self._dropped(name), is_control=is_control)
        self.queues[name] = q
        self.metrics.watch_queue(name, q.__len__)
        return q

    def _dropped(self, queue: str) -> Callable[[object], None]:
        def on_drop(item: object) -> None:
            fid = item.id if isinstance(item, Frame) else None
            self.metrics.dropped.labels(stream=fid.stream_id if fid is not None else "unknown",
                                        reason="queue_full").inc()

        return on_drop

    def _source_for(self, plan: SourcePlan) -> Source:
        """The decoded queue and source thread of ``plan``, its queue in the fan-in (not started)."""
        s = plan.source
        policy = self.cfg.queues.live_policy if s.is_live else "block"
        q: NamedQueue[Any] = NamedQueue(f"decoded:{s.id}", self.cfg.queues.decoded, policy,
                                        on_drop=self._dropped("decoded"), is_control=is_control,
                                        listener=self._fan.event)
        self.queues[q.name] = q
        self.metrics.watch_queue(q.name, q.__len__)
        self._fan.add(q)
        src = create_source(s, q, self.metrics, plan.start_frame, live=self.cfg.live)
        src.abort = self.abort
        self.sources.append(src)
        self._reading[s.id] = src
        self._plans[s.id] = plan
        self.report.streams[s.id] = StreamReport(s.id, skipped=plan.start_frame)
        for sink in self.sinks:
            sink.begin_stream(s)
        if self.degrade is not None:
            self.degrade.begin_stream(s)
        return src

    def _planned(self) -> RunPlan:
        if self.plan is None:
            self.plan = plan_run(self.cfg, self.engines, find_progress_store(self.sinks), record=True)
        return self.plan

    def build(self) -> None:
        cfg = self.cfg
        # a source added while the run is being built joins either the plan read here or the built stage
        with self._lock:
            plan = self._planned()
            live_ids = [p.stream_id for p in plan.sources if p.live]
            watchers: list[Sink] = []
            if self.select_tasks is None and cfg.live.latency_budget_ms > 0 and (live_ids or self.hold_open):
                from pipeline.runtime.degrade import DegradeController

                self.degrade = DegradeController(cfg.live, tuple(self.engines), live_ids, self.metrics)
                self.select_tasks = self.degrade.select_tasks
                watchers.append(self.degrade)  # sees each published batch after the real sinks
            for p in plan.sources:
                self._source_for(p)
            prepared = self._queue("prepared", cfg.queues.prepared)
            inferred = self._queue("inferred", cfg.queues.inferred)
            results = self._queue("results", cfg.queues.results)
            seg = self.engines.get("segmentation")
            ref = (seg or next(iter(self.engines.values()))).spec
            depth = self.engines.get("depth")
            depth_kind = (depth.spec.depth_kind or "relative_inverse") if depth is not None else "relative_inverse"
            num_classes = max(len(seg.spec.labels), 1) if seg is not None else 1
            keep_image = any(s.wants_images for s in self.sinks)
            # the debounce of a resumed stream continues where its published frames left it
            rule_states = {p.stream_id: p.rule_state for p in plan.sources
                           if p.rule_state and plan.zones.rules_for(p.stream_id)}
            self._pre = PreprocessStage(self._fan, prepared, self.metrics, self.abort, self.engines, len(self.sources),
                                        self.select_tasks, keep_image, self.hold_open, self._stream_left)
            self.stages = [
                self._pre,
                InferStage(prepared, inferred, self.metrics, self.abort, self.engines, cfg.engine.batch_size,
                           cfg.engine.max_wait_ms),
                PostprocessStage(inferred, results, self.metrics, self.abort, cfg.mask_size, ref.network_shape,
                                 num_classes, cfg.depth_grid, depth_kind,
                                 keep_depth_map=keep_image or cfg.redis.depth_map, zones=plan.zones,
                                 rule_states=rule_states, ends_rules=self._ends_rules),
                PublishStage(results, self.metrics, self.abort, [*self.sinks, *watchers], on_eos=self._on_eos),
            ]
            for st in self.stages:
                st.on_fatal = self._on_fatal
        self._warm_shapes()

    def _warm_shapes(self) -> None:
        """Engines whose network shape follows the source (checkpoints that keep the aspect ratio, or do not
        resize) check each file source's shape against the device's memory (:func:`engines.memory.
        check_network_shape`) and prepare it now (CUDA graphs, TensorRT plans), before frames flow, from the plans'
        probes; a live source's shape is known only once it streams: the preprocess stage checks and logs every
        source's shape on its first frame, and it is prepared on its first batch."""
        from engines.memory import check_network_shape

        sized = [(p.stream_id, p.size, p.network_shapes) for p in self._planned().sources if p.size is not None]
        varying = {t: e for t, e in self.engines.items() if e.spec.preprocess.fixed_shape is None}
        shapes: dict[str, set[tuple[int, int]]] = {t: set() for t in varying}
        checked: dict[tuple[str, int, int], int] = {}
        for sid, (h, w), planned in sized:  # every shape refused before a graph or plan is built for any
            for t, e in varying.items():
                shape = planned.get(t) or e.spec.network_shape(h, w)
                checked[(e.spec.task, *shape)] = check_network_shape(e.spec, shape, f"source {sid!r} ({w}x{h})")
                shapes[t].add(shape)
        if self._pre is not None:  # the stage judges each shape once: not again on its first frame
            self._pre.estimates.update(checked)
        for t, e in varying.items():
            if shapes[t]:
                e.warmup(sorted(shapes[t]))

    # -- sources joining and leaving a running pipeline ----------------------------------------------------
    def add_source(self, plan: SourcePlan) -> None:
        """Join the source of ``plan`` (see :func:`~pipeline.runtime.plan.plan_source`): its decoded queue joins
        the fan-in and, when the pipeline runs, its source thread starts. A :class:`PipelineError` when a source
        of that stream id is still being read, or the pipeline has ended."""
        with self._lock:
            sid = plan.stream_id
            if sid in self._reading:
                raise PipelineError(f"stream {sid!r} is already part of the run; remove it first")
            if self._pre is None:  # not built yet: it joins with the others
                base = self._planned()
                self.plan = RunPlan(base.zones, (*base.sources, plan))
                return
            if not self._pre.admit():
                raise PipelineError(f"cannot add stream {sid!r}: the run has ended")
            post = next((st for st in self.stages if isinstance(st, PostprocessStage)), None)
            if post is not None:  # the stream's earlier end (if any) has passed it: its rules start from the plan
                post.restore_rules(sid, plan.rule_state)
            self._removed.discard(sid)
            self._handed_over.discard(sid)
            src = self._source_for(plan)
            if self._started:
                src.start()
        log.info("%s: joined the run%s", sid, f" (from frame {plan.start_frame})" if plan.start_frame else "")

    def remove_source(self, stream_id: str, handover: bool = False) -> None:
        """Stop reading ``stream_id``: what it decoded drains through to the sinks, then its end marker passes and
        its queue leaves the fan-in. With ``handover`` the stream continues elsewhere (a fleet camera moving to
        another node): its end does not end its zone rules, whose debounce state the next reader picks up. A
        :class:`PipelineError` when no such source is being read."""
        with self._lock:
            src = self._reading.get(stream_id)
            if src is None:
                raise PipelineError(f"no stream {stream_id!r} is being read")
            self._removed.add(stream_id)
            if handover:
                self._handed_over.add(stream_id)
            else:
                self._handed_over.discard(stream_id)
            self._gone.append(src)
        src.stop()
        log.info("%s: leaving the run", stream_id)

    def _stream_left(self, eos: EndOfStream) -> None:
        """A stream's end marker passed the preprocess stage: its queue is empty and leaves the fan-in."""
        with self._lock:
            src = self._reading.get(eos.stream_id)
            if src is not None and src.out in self._fan.queues:
                self._fan.remove(src.out)

    def _ends_rules(self, eos: EndOfStream) -> bool:
        """A live stream's end ends its rules; a file's only when it was read to its end, not interrupted or
        removed (a resumed run continues its debounce)."""
        if eos.stream_id in self._handed_over:
            return False
        plan = self._plans.get(eos.stream_id)
        live = plan is not None and plan.live
        return live or not (self.stopping.is_set() or eos.stream_id in self._removed)

    def unwritten(self) -> int:
        """Frames of file streams decoded in this run that no sink has written (what a stop during a Redis outage
        leaves out, and a rerun resumes). Live streams do not count: their dropped frames are counted as drops."""
        decoded: dict[str, int] = {}
        for src in self.sources:
            if not src.cfg.is_live:
                decoded[src.id] = decoded.get(src.id, 0) + src.frames
        total = 0
        for sid, frames in decoded.items():
            written = max((s.published_by.get(sid, 0) for s in self.sinks), default=0)
            total += max(frames - written, 0)
        return total

    def _on_eos(self, eos: EndOfStream) -> None:
        """A stream's end marker reached the sinks: every result of it is written, and its id is free again."""
        with self._lock:
            self._reading.pop(eos.stream_id, None)
        rep = self.report.streams.setdefault(eos.stream_id, StreamReport(eos.stream_id))
        rep.decoded, rep.error, rep.truncated, rep.done = eos.frames, eos.error, eos.truncated, True
        rep.bad_packets = eos.bad_packets
        src = next((s for s in reversed(self.sources) if s.id == eos.stream_id), None)
        if src is not None and src.fatal and self._fatal is None:
            # a camera down at start with live.fail_if_down_at_start: stop the run, draining what was decoded
            self._fatal = eos.error or f"source {eos.stream_id!r} failed"
            rep.error = None  # reported once, as the run's fatal error
            self.stopping.set()
            if self._pre is not None:
                self._pre.release()
            for s in self.sources:
                s.stop()

    # -- health (served on /healthz and /readyz) ------------------------------------------------------
    def health(self) -> tuple[bool, bool, dict[str, Any]]:
        """(alive, ready, detail). Alive: no stage died and no fatal error. Ready: alive, started, every
        sink reachable and every source up (a camera streaming; a file decoding or done without error)."""
        dead = [st.name for st in self.stages if st.error is not None]
        alive = self._fatal is None and not dead
        sources: dict[str, str] = {}
        sources_ok = True
        for src in self.sources:
            if any(src is g for g in self._gone):
                continue  # taken out of the run on purpose
            state = str(src.state)
            sources[src.id] = state
            if src.cfg.is_live:
                ok = state == "streaming"
            else:
                ok = state in ("idle", "streaming") or (state == "stopped" and not src.error)
            sources_ok = sources_ok and ok
        sinks: dict[str, bool] = {}
        for sink in self.sinks:
            sinks[sink.name] = bool(sink.reachable())
        started = bool(self.stages) and any(st.alive for st in self.stages)
        ready = alive and started and sources_ok and all(sinks.values())
        detail: dict[str, Any] = {"sources": sources, "sinks": sinks}
        if self.degrade is not None:
            detail["degraded"] = self.degrade.levels()
        if dead:
            detail["dead_stages"] = dead
        if self._fatal is not None:
            detail["fatal"] = self._fatal
        return alive, ready, detail

    def _on_fatal(self, stage: Stage, e: BaseException) -> None:
        if self._fatal is None:
            detail = error_reason(e)
            self._fatal = f"{stage.name} stage failed: {detail}"
            if not isinstance(e, Exception):
                self._fatal = f"{stage.name} stage stopped ({type(e).__name__})"
        self.abort.set()
        for s in self.sources:
            s.stop()

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        if not self.stages:
            self.build()
        self._t0 = time.monotonic()
        for st in self.stages:
            st.start()
        with self._lock:
            self._started = True
            for s in self.sources:
                s.start()

    def request_stop(self) -> None:
        """Stop reading; everything already decoded drains through to the sinks. A sink that cannot write
        (Redis down) gives up after its retry limit (``redis.retry_max_s``) instead of waiting forever."""
        self.stopping.set()
        self.report.interrupted = True
        if self._pre is not None:
            self._pre.release()
        for s in self.sources:
            s.stop()
        for sink in self.sinks:
            sink.request_stop()

    def abort_now(self) -> None:
        """Quit at once (a second signal): stages stop after their current item, a sink waiting for Redis gives
        up, and :meth:`wait` returns within its bounded joins. What was not written is :meth:`unwritten`."""
        self.request_stop()
        if self._fatal is None:
            self._fatal = "stopped at once by a second signal"
        self.abort.set()
        for sink in self.sinks:
            sink.abandon()

    @property
    def running(self) -> bool:
        return any(st.alive for st in self.stages)

    def wait(self, tick: Callable[[], None] | None = None, poll: float = 0.25) -> RunReport:
        while self.running:
            if tick is not None:
                tick()
            self.stages[-1].join(poll)
        for s in self.sources:
            s.join(timeout=5)
        for st in self.stages:
            st.join(timeout=5)
        if self.abort.is_set():
            self._discard_queued()
        for src in self.sources:  # a stream whose end marker never reached the sinks (aborted run)
            rep = self.report.streams.get(src.id)
            if rep is not None and not rep.done:
                rep.decoded = src.frames  # the latest reading of that stream id wins
        if tick is not None:
            tick()
        self.report.seconds = time.monotonic() - self._t0
        # one frame written to several sinks counts once
        self.report.published = max((s.published for s in self.sinks), default=0)
        self.report.fatal = self._fatal
        self.report.unwritten = self.unwritten()
        return self.report

    def _discard_queued(self) -> None:
        """Drop what an aborted run left in its queues now, while the interpreter is whole: decoded pictures are
        views of PyAV frames, and freeing those during interpreter shutdown can hang."""
        for q in self.queues.values():
            while q.get_nowait() is not None:
                pass

    def run(self, tick: Callable[[], None] | None = None) -> RunReport:
        self.start()
        return self.wait(tick)
