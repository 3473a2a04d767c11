"""``dptstream run``: flags -> config -> the pipeline; exit code from its report."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeline.cli.common import (
    EXIT_FAIL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    BatchSizeOpt,
    ConfigArg,
    DebugOpt,
    DeviceOpt,
    EngineOpt,
    MaskSizeOpt,
    MaxSideOpt,
    MetricsPortOpt,
    ModelOpt,
    PrecisionOpt,
    PrefixOpt,
    ProgressOpt,
    QuietOpt,
    StopOnSignals,
    TasksOpt,
    build_overrides,
    err,
    set_max_side,
    setup_logging,
)
from pipeline.config import ConfigError, PipelineConfig
from pipeline.configfile import load_config

if TYPE_CHECKING:
    from pipeline.runtime import RunReport

log = logging.getLogger("dptstream")


def run(
    config: ConfigArg = None,
    source: Annotated[list[str] | None, typer.Option("--source", "-s", help="[ID=]URI: a file path, file://, or a live rtsp(s)://, http(s):// (incl. HLS) or rtmp(s):// stream. Repeatable.")] = None,
    sink: Annotated[list[str] | None, typer.Option("--sink", help="redis://[user:pass@]host:port/db, rediss://, dir:PATH or video:PATH. Repeatable. Default: $REDIS_URL or redis://127.0.0.1:6379/0.")] = None,
    model: ModelOpt = None,
    tasks: TasksOpt = None,
    engine: EngineOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    batch_size: BatchSizeOpt = None,
    mask_size: MaskSizeOpt = None,
    metrics_port: MetricsPortOpt = None,
    redis_prefix: PrefixOpt = None,
    no_resume: Annotated[bool, typer.Option("--no-resume", help="Publish files again from frame 0 even if already published.")] = False,
    progress: ProgressOpt = None,
    max_side: MaxSideOpt = None,
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run the pipeline: decode -> preprocess -> infer -> postprocess -> publish."""
    setup_logging(debug, quiet)
    o = build_overrides(source, sink, model, tasks, engine, device, batch_size, mask_size, metrics_port,
                        precision, redis_prefix, no_resume)
    if progress is not None:
        o["progress"] = progress
    set_max_side(o, max_side)
    cfg = load_config(config, o)  # --model entries merge over the file's models (load_config merges mappings)
    raise typer.Exit(run_pipeline(cfg))


def run_pipeline(cfg: PipelineConfig) -> int:
    from pipeline.progress import ProgressView
    from pipeline.runtime import Pipeline
    from pipeline.runtime.app import start_runtime

    if not cfg.sources:
        raise ConfigError("no sources: pass --source PATH_OR_URI (repeatable) or list sources in the config file")
    holder: dict[str, Pipeline] = {}

    def health() -> tuple[bool, bool, dict[str, Any]]:
        p = holder.get("pipeline")
        if p is None:
            return True, False, {"state": "starting"}
        return p.health()

    rt = start_runtime(cfg, health=health)
    try:
        for t, e in rt.engines.items():
            log.info("%s: %s (%s) input %s", t, e.spec.model_id, e.spec.backend, e.spec.preprocess.describe())
        log.info("sinks: %s", ", ".join(s.name for s in rt.sinks))
        if rt.port is not None:
            log.info("metrics on http://%s:%d/metrics", cfg.metrics.host, rt.port)
        plan = rt.plan_run()
        pipeline = Pipeline(cfg, rt.engines, rt.sinks, rt.metrics, plan)
        pipeline.build()
        holder["pipeline"] = pipeline
        totals = {p.stream_id: p.total_frames for p in plan.sources}
        show = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
        view = ProgressView(rt.metrics, totals, pipeline.report, enabled=show)
        with StopOnSignals(pipeline) as signals, view:
            report = pipeline.run(tick=view.update)
        if signals.forced:  # a second signal: its line said what was not written
            return EXIT_INTERRUPTED
        return finish(report, cfg)
    finally:
        rt.close()


def finish(report: RunReport, cfg: PipelineConfig) -> int:
    n = report.published
    secs = max(report.seconds, 1e-9)
    skipped = sum(s.skipped for s in report.streams.values())
    extra = f", {skipped} already published before" if skipped else ""
    log.info("published %d frames from %d stream(s) in %.1fs (%.1f frames/s)%s", n, len(report.streams), secs,
             n / secs, extra)
    code = EXIT_OK
    for s in report.streams.values():
        log.info("%s: %d frames decoded%s", s.stream_id, s.decoded, " (interrupted)" if report.interrupted else "")
        if s.truncated:
            log.warning("%s: file is truncated; published all %d decodable frames", s.stream_id, s.decoded)
        if s.bad_packets:
            log.warning("%s: %d packet(s) could not be decoded and were skipped (each may have held a frame)",
                        s.stream_id, s.bad_packets)
        if s.error:
            err(s.error)
            code = EXIT_FAIL
    unwritten = report.unwritten
    if report.fatal:
        lost = f"; {unwritten} results not written (a rerun resumes after the last written frame)" \
            if unwritten else ""
        err(report.fatal + lost)
        code = EXIT_FAIL
    elif unwritten and report.interrupted:
        log.warning("%d decoded results were not written before the stop (a rerun resumes after the last written "
                    "frame)", unwritten)
    return code


def register(app: typer.Typer) -> None:
    app.command()(run)
