"""Builds a running pipeline from a validated config: engines, sinks, metrics server. Shared by CLI commands."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import engines as eng
from engines import Engine, EngineConfig
from pipeline.config import ConfigError, PipelineConfig
from pipeline.metrics import Metrics
from pipeline.runtime.plan import RunPlan, find_progress_store, plan_run, resolve_zones, warn_unknown_zone_streams
from pipeline.sinks import ProgressStore, Sink, create_sink
from pipeline.zones import ZonePlan

log = logging.getLogger(__name__)


def version() -> str:
    try:
        from importlib.metadata import version as v

        return v("dptstream")
    except Exception:
        return "0.1.0+src"


def engine_config(cfg: PipelineConfig, task: str) -> EngineConfig:
    e = cfg.engine
    return EngineConfig(task=task, model=cfg.models[task],  # type: ignore[arg-type]
                        backend=e.backend, device=e.device, precision=e.precision, max_batch=e.batch_size,
                        cuda_graphs=e.cuda_graphs, compile=e.compile, cache_dir=e.cache_dir, threads=e.threads,
                        max_side=e.max_side)


def create_engines(cfg: PipelineConfig) -> dict[str, Engine]:
    """One engine per task, each warmed up (graphs captured, TensorRT's first run done) before any frame
    flows: a first call in the middle of a run stalls every stream behind it."""
    out: dict[str, Engine] = {}
    try:
        for task in cfg.tasks:
            out[task] = eng.create_engine(engine_config(cfg, task))
        for e in out.values():
            e.warmup()
    except BaseException:
        for e in out.values():
            e.close()
        raise
    return out


@dataclass
class Runtime:
    """Engines, sinks and metrics for a config, and its plan: the zones resolved against the engines and each
    configured source checked before the models loaded (probed; nothing recorded yet)."""

    cfg: PipelineConfig
    engines: dict[str, Engine]
    sinks: list[Sink]
    metrics: Metrics
    stop: threading.Event
    port: int | None = None
    plan: RunPlan = field(default_factory=RunPlan)

    @property
    def zones(self) -> ZonePlan:
        return self.plan.zones

    @property
    def store(self) -> ProgressStore | None:
        """Where the resume points are kept (the Redis sink), if any sink keeps them."""
        return find_progress_store(self.sinks)

    def plan_run(self) -> RunPlan:
        """The configured sources planned for this run, recorded in the progress store: the probes of the check
        before the models loaded are reused, so no file is opened again before it decodes."""
        return plan_run(self.cfg, self.engines, self.store, record=True, earlier=self.plan, zones=self.zones)

    def close(self) -> None:
        for s in self.sinks:
            s.close()
        for e in self.engines.values():
            e.close()
        self.metrics.close()


def labels_of(engines: dict[str, Engine]) -> dict[int, str]:
    seg = engines.get("segmentation")
    return dict(seg.spec.labels) if seg is not None else {}


def open_sinks(cfg: PipelineConfig, metrics: Metrics, stop: threading.Event, **extra: Any) -> list[Sink]:
    """Create and open every sink (Redis is pinged here, so a dead sink fails before models load)."""
    if not cfg.sinks:
        raise ConfigError("no sink: pass --sink redis://HOST:PORT/DB (or set REDIS_URL), or --sink dir:PATH")
    sinks = [create_sink(uri, cfg, metrics, None, None, stop, **extra) for uri in cfg.sinks]
    opened: list[Sink] = []
    try:
        for s in sinks:
            s.open()
            opened.append(s)
    except BaseException:
        for s in opened:
            s.close()
        raise
    return sinks


def describe_sinks(sinks: list[Sink], engines: dict[str, Engine], zones: ZonePlan) -> None:
    """Tell sinks the class labels, model ids and resolved zones once the engines are loaded."""
    models = {t: e.spec.model_id for t, e in engines.items()}
    for s in sinks:
        s.describe(labels_of(engines), models, zones)


def start_runtime(cfg: PipelineConfig, serve_metrics: bool = True, health: Any = None) -> Runtime:
    probed = plan_run(cfg, None, None, record=False)  # each file source probed once: a bad one is said first
    metrics = Metrics()
    stop = threading.Event()
    sinks = open_sinks(cfg, metrics, stop)
    try:
        # another file under a published stream id is refused before the models load
        checked = plan_run(cfg, None, find_progress_store(sinks), record=False, earlier=probed)
        engines = create_engines(cfg)
        try:
            zones = resolve_zones(cfg, engines)  # class names and metric depth checked once the engines are loaded
            warn_unknown_zone_streams(cfg)
            describe_sinks(sinks, engines, zones)
        except BaseException:
            for e in engines.values():
                e.close()
            raise
    except BaseException:
        for s in sinks:
            s.close()
        raise
    metrics.build_info.info({
        "version": version(),
        "backends": ",".join(f"{t}={e.spec.backend}" for t, e in engines.items()),
        "models": ",".join(f"{t}={e.spec.model_id}" for t, e in engines.items()),
        "precisions": ",".join(f"{t}={e.spec.precision}" for t, e in engines.items()),
    })
    rt = Runtime(cfg, engines, sinks, metrics, stop, plan=RunPlan(zones, checked.sources))
    if serve_metrics and cfg.metrics.port is not None:
        try:
            rt.port = metrics.serve(cfg.metrics.port, cfg.metrics.host, health)
        except OSError as e:
            rt.close()
            host = cfg.metrics.host[:100]
            shown = f"[{host}]" if ":" in host else host
            raise ConfigError(f"cannot serve metrics on {shown}:{cfg.metrics.port} ({e.strerror or e}); "
                              "pick another port with --metrics-port or another metrics.host") from e
    return rt
