"""Wires sources, stages, queues and sinks; runs until every source ends or a stop is requested."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engines import Engine
from pipeline.config import ConfigError, PipelineConfig, SourceConfig, shorten
from pipeline.frames import EndOfStream, Frame
from pipeline.metrics import Metrics
from pipeline.queues import FanIn, NamedQueue
from pipeline.sinks import RedisSink, Sink, parse_resume_point
from pipeline.sources import Source, SourceIdentity, create_source, source_identity
from pipeline.stages import InferStage, PostprocessStage, PreprocessStage, PublishStage, Stage, is_control
from pipeline.zones import RuleError, ZonePlan, resolve

log = logging.getLogger(__name__)


class PipelineError(Exception):
    """A fatal error inside the running pipeline (dead engine, sink gone for good); one line for the user."""


def zone_plan(cfg: PipelineConfig, engines: dict[str, Engine]) -> ZonePlan:
    """The config's zones and rules resolved against the loaded checkpoints (class names -> ids; a distance
    rule needs a metric depth checkpoint). A :class:`ConfigError` before any frame is read."""
    seg = engines.get("segmentation")
    depth = engines.get("depth")
    labels = dict(seg.spec.labels) if seg is not None else {}
    metric = depth.spec.metric if depth is not None else None
    try:
        return resolve(cfg.zones, cfg.rules, labels, metric, depth.spec.model_id if depth is not None else "")
    except RuleError as e:
        raise ConfigError(str(e)) from e


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


def resume_point(sink: RedisSink, s: SourceConfig, resume: bool, record: bool) -> int:
    """First frame to publish for source ``s`` with Redis sink ``sink``.

    A file resumes after its last published frame only if the progress hash was recorded for the same file
    (size, video duration, hash of the first MiB); a different file under the same stream id is refused with a
    :class:`ConfigError`, never silently skipped. With ``record`` the file's identity is written next to the
    resume point (live sources and ``resume=False`` clear it first); without, nothing is written (a check
    before the models load)."""
    fields = SourceIdentity.FIELDS
    if s.is_live or s.scheme != "file":
        if record:
            sink.reset_progress(s.id, fields)
        return 0
    ident = source_identity(s)
    if not resume:
        if record:
            sink.reset_progress(s.id, fields)
            sink.record_source(s.id, ident.fields())
        return 0
    progress = sink.progress_fields(s.id)
    last = parse_resume_point(sink.keys.progress(s.id), progress["frame"]) if "frame" in progress else -1
    before = SourceIdentity.from_fields(progress)
    if last >= 0 and before is not None and not before.same_file(ident):
        raise ConfigError(
            f"stream {s.id!r} was published from {before.describe()}, but {ident.describe()} is a different "
            f"file: give it its own id (--source NEWID={shorten(s.path)}) or publish from frame 0 with "
            "--no-resume")
    if record:
        if last >= 0 and before is None:
            log.warning("%s: the resume point has no source identity (written by an older version); resuming "
                        "after frame %d and recording %s as its source", s.id, last, ident.describe())
        sink.record_source(s.id, ident.fields())
        if last >= 0:
            log.info("%s: resuming after frame %d (already published)", s.id, last)
    return last + 1


def check_resume(cfg: PipelineConfig, sinks: Sequence[Sink]) -> None:
    """Refuse, before any model loads, a file whose stream id holds frames published from another file."""
    sink = next((s for s in sinks if isinstance(s, RedisSink)), None)
    if sink is None:
        return
    for s in cfg.sources:
        resume_point(sink, s, cfg.resume, record=False)


class Pipeline:
    """One run over ``cfg.sources`` with already-created engines and sinks (both reusable across runs)."""

    def __init__(self, cfg: PipelineConfig, engines: dict[str, Engine], sinks: Sequence[Sink], metrics: Metrics,
                 live_options: dict[str, Any] | None = None,
                 select_tasks: Callable[[Frame], tuple[str, ...]] | None = None) -> None:
        self.cfg = cfg
        self.engines = engines
        self.sinks = list(sinks)
        self.metrics = metrics
        self.live_options = live_options or {}
        self.select_tasks = select_tasks
        self.degrade: Any = None  # the latency-budget controller, when live.latency_budget_ms is set
        self.abort = threading.Event()
        self.stopping = threading.Event()
        self.report = RunReport()
        self._fatal: str | None = None
        self.sources: list[Source] = []
        self.stages: list[Stage] = []
        self.queues: dict[str, NamedQueue[Any]] = {}

    # -- wiring -----------------------------------------------------------------------------------------
    def _queue(self, name: str, size: int, policy: Any = "block") -> NamedQueue[Any]:
        q: NamedQueue[Any] = NamedQueue(name, size, policy, on_drop=self._dropped(name), is_control=is_control)
        self.queues[name] = q
        self.metrics.watch_queue(name, q.__len__)
        return q

    def _dropped(self, queue: str) -> Callable[[object], None]:
        def on_drop(item: object) -> None:
            sid = getattr(getattr(item, "id", None), "stream_id", "unknown")
            self.metrics.dropped.labels(stream=sid, reason="queue_full").inc()

        return on_drop

    def _redis(self) -> RedisSink | None:
        return next((s for s in self.sinks if isinstance(s, RedisSink)), None)

    def build(self) -> None:
        cfg = self.cfg
        fan: FanIn[Any] = FanIn()
        redis_sink = self._redis()
        plan = zone_plan(cfg, self.engines)
        rule_states: dict[str, str] = {}
        for s in cfg.sources:
            start = 0
            rep = StreamReport(s.id)
            if redis_sink is not None:
                start = self._resume_point(redis_sink, s)
                rep.skipped = start
                if start:
                    state = redis_sink.rule_state(s.id) if plan.rules_for(s.id) else None
                    if state:  # the debounce continues where the published frames left it
                        rule_states[s.id] = state
            policy = cfg.queues.live_policy if s.is_live else "block"
            q: NamedQueue[Any] = NamedQueue(f"decoded:{s.id}", cfg.queues.decoded, policy,
                                            on_drop=self._dropped("decoded"), is_control=is_control,
                                            listener=fan.event)
            self.queues[q.name] = q
            self.metrics.watch_queue(q.name, q.__len__)
            fan.add(q)
            src = create_source(s, q, self.metrics, start, **self.live_options)
            src.abort = self.abort
            self.sources.append(src)
            self.report.streams[s.id] = rep
        prepared = self._queue("prepared", cfg.queues.prepared)
        inferred = self._queue("inferred", cfg.queues.inferred)
        results = self._queue("results", cfg.queues.results)
        seg = self.engines.get("segmentation")
        ref = (seg or next(iter(self.engines.values()))).spec
        depth = self.engines.get("depth")
        depth_kind = (depth.spec.depth_kind or "relative_inverse") if depth is not None else "relative_inverse"
        num_classes = max(len(seg.spec.labels), 1) if seg is not None else 1
        keep_image = any(getattr(s, "wants_images", False) for s in self.sinks)
        watchers: list[Any] = []
        live_ids = [s.id for s in cfg.sources if s.is_live]
        if self.select_tasks is None and cfg.live.latency_budget_ms > 0 and live_ids:
            from pipeline.runtime.degrade import DegradeController

            self.degrade = DegradeController(cfg.live, tuple(self.engines), live_ids, self.metrics)
            self.select_tasks = self.degrade.select_tasks
            watchers.append(self.degrade)  # sees each published batch after the real sinks
        self.stages = [
            PreprocessStage(fan, prepared, self.metrics, self.abort, self.engines, len(self.sources),
                            self.select_tasks, keep_image),
            InferStage(prepared, inferred, self.metrics, self.abort, self.engines, cfg.engine.batch_size,
                       cfg.engine.max_wait_ms),
            PostprocessStage(inferred, results, self.metrics, self.abort, cfg.mask_size, ref.network_shape,
                             num_classes, cfg.depth_grid, depth_kind,
                             keep_depth_map=keep_image or cfg.redis.depth_map, zones=plan,
                             rule_states=rule_states, ends_rules=self._ends_rules),
            PublishStage(results, self.metrics, self.abort, [*self.sinks, *watchers], on_eos=self._on_eos),
        ]
        for st in self.stages:
            st.on_fatal = self._on_fatal
        self._warm_shapes()

    def _warm_shapes(self) -> None:
        """Engines whose network shape follows the source (checkpoints that keep the aspect ratio, or do not
        resize) check each file source's shape against the device's memory (:func:`engines.memory.
        check_network_shape`) and prepare it now (CUDA graphs, TensorRT plans), before frames flow; a live
        source's shape is known only once it streams: the preprocess stage checks and logs every source's shape
        on its first frame, and it is prepared on its first batch."""
        from engines.memory import check_network_shape
        from pipeline.sources import SourceError, probe_file

        varying = [e for e in self.engines.values() if e.spec.preprocess.fixed_shape is None]
        if not varying:
            return
        by_source: dict[str, tuple[int, int]] = {}
        for s in self.cfg.sources:
            if s.is_live:
                continue
            try:
                facts = probe_file(s)
            except SourceError:
                continue  # the source reports it itself
            if facts.get("width") and facts.get("height"):
                by_source[s.id] = (int(facts["height"]), int(facts["width"]))
        for sid, (h, w) in by_source.items():  # refused before a graph or plan is built for it
            for e in varying:
                check_network_shape(e.spec, e.spec.network_shape(h, w), f"source {sid!r} ({w}x{h})")
        sizes = set(by_source.values())
        for e in (e for e in varying if getattr(e, "warmup", None) is not None):
            shapes = sorted({e.spec.network_shape(h, w) for h, w in sizes})
            if shapes:
                e.warmup(shapes)  # type: ignore[attr-defined]

    def _ends_rules(self, eos: EndOfStream) -> bool:
        """A live stream's end ends its rules; a file's only when it was read to its end, not interrupted
        (a resumed run continues its debounce)."""
        live = any(s.id == eos.stream_id and s.is_live for s in self.cfg.sources)
        return live or not self.stopping.is_set()

    def _resume_point(self, sink: RedisSink, s: SourceConfig) -> int:
        """First frame to publish for ``s`` (see :func:`resume_point`); records the file's identity."""
        return resume_point(sink, s, self.cfg.resume, record=True)

    def unwritten(self) -> int:
        """Frames of file streams decoded in this run that no sink has written (what a stop during a Redis outage
        leaves out, and a rerun resumes). Live streams do not count: their dropped frames are counted as drops."""
        total = 0
        for src in self.sources:
            if src.cfg.is_live:
                continue
            written = max((s.published_by.get(src.id, 0) for s in self.sinks if hasattr(s, "published_by")),
                          default=0)
            total += max(src.frames - written, 0)
        return total

    def _on_eos(self, eos: EndOfStream) -> None:
        rep = self.report.streams.setdefault(eos.stream_id, StreamReport(eos.stream_id))
        rep.decoded, rep.error, rep.truncated, rep.done = eos.frames, eos.error, eos.truncated, True
        rep.bad_packets = eos.bad_packets
        src = next((s for s in self.sources if s.id == eos.stream_id), None)
        if src is not None and getattr(src, "fatal", False) and self._fatal is None:
            # a camera down at start with live.fail_if_down_at_start: stop the run, draining what was decoded
            self._fatal = eos.error or f"source {eos.stream_id!r} failed"
            rep.error = None  # reported once, as the run's fatal error
            self.stopping.set()
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
            state = str(src.state)
            sources[src.id] = state
            if src.cfg.is_live:
                ok = state == "streaming"
            else:
                ok = state in ("idle", "streaming") or (state == "stopped" and not src.error)
            sources_ok = sources_ok and ok
        sinks: dict[str, bool] = {}
        for sink in self.sinks:
            probe = getattr(sink, "reachable", None)
            sinks[sink.name] = bool(probe()) if probe is not None else True
        started = bool(self.stages) and any(st.alive for st in self.stages)
        ready = alive and started and sources_ok and all(sinks.values())
        detail: dict[str, Any] = {"sources": sources, "sinks": sinks}
        if self.degrade is not None:
            detail["degraded"] = self.degrade.describe()
        if dead:
            detail["dead_stages"] = dead
        if self._fatal is not None:
            detail["fatal"] = self._fatal
        return alive, ready, detail

    def _on_fatal(self, stage: Stage, e: BaseException) -> None:
        if self._fatal is None:
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
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
        for st in self.stages:
            st.start()
        for s in self.sources:
            s.start()
        self._t0 = time.monotonic()

    def request_stop(self) -> None:
        """Stop reading; everything already decoded drains through to the sinks. A sink that cannot write
        (Redis down) gives up after its retry limit (``redis.retry_max_s``) instead of waiting forever."""
        self.stopping.set()
        self.report.interrupted = True
        for s in self.sources:
            s.stop()
        for sink in self.sinks:
            stop = getattr(sink, "request_stop", None)
            if stop is not None:
                stop()

    def abort_now(self) -> None:
        """Quit at once (a second signal): stages stop after their current item, a sink waiting for Redis gives
        up, and :meth:`wait` returns within its bounded joins. What was not written is :meth:`unwritten`."""
        self.request_stop()
        if self._fatal is None:
            self._fatal = "stopped at once by a second signal"
        self.abort.set()
        for sink in self.sinks:
            abandon = getattr(sink, "abandon", None)
            if abandon is not None:
                abandon()

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
                rep.decoded = src.frames
        if tick is not None:
            tick()
        self.report.seconds = time.monotonic() - self._t0
        # one frame written to several sinks counts once
        self.report.published = max((getattr(s, "published", 0) for s in self.sinks), default=0)
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
