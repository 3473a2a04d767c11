"""Builds a running pipeline from a validated config: engines, sinks, metrics server. Shared by CLI commands."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import engines as eng
from engines import Engine, EngineConfig
from pipeline.config import ConfigError, PipelineConfig
from pipeline.metrics import Metrics
from pipeline.runtime.pipeline import check_resume
from pipeline.sinks import Sink, create_sink

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
            warm = getattr(e, "warmup", None)
            if warm is not None:
                warm()
    except BaseException:
        for e in out.values():
            e.close()
        raise
    return out


@dataclass
class Runtime:
    cfg: PipelineConfig
    engines: dict[str, Engine]
    sinks: list[Sink]
    metrics: Metrics
    stop: threading.Event
    port: int | None = None

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


def describe_sinks(sinks: list[Sink], engines: dict[str, Engine]) -> None:
    """Tell sinks the class labels and model ids once the engines are loaded."""
    models = {t: e.spec.model_id for t, e in engines.items()}
    for s in sinks:
        fn = getattr(s, "describe", None)
        if fn is not None:
            fn(labels_of(engines), models)


def start_runtime(cfg: PipelineConfig, serve_metrics: bool = True, health: Any = None) -> Runtime:
    metrics = Metrics()
    stop = threading.Event()
    sinks = open_sinks(cfg, metrics, stop)
    try:
        check_resume(cfg, sinks)  # another file under a published stream id: refused before the models load
        engines = create_engines(cfg)
        from pipeline.runtime.pipeline import zone_plan

        try:
            zone_plan(cfg, engines)  # class names and metric depth checked once the engines are loaded
        except BaseException:
            for e in engines.values():
                e.close()
            raise
        describe_sinks(sinks, engines)
    except BaseException:
        for s in sinks:
            s.close()
        raise
    metrics.build_info.info({
        "version": version(),
        "backends": ",".join(f"{t}={e.spec.backend}" for t, e in engines.items()),
        "models": ",".join(f"{t}={e.spec.model_id}" for t, e in engines.items()),
    })
    rt = Runtime(cfg, engines, sinks, metrics, stop)
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
