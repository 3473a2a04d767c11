"""``dptstream run``: flags -> config -> the pipeline; exit code from its report."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.cli.common import (
    EXIT_FAIL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    DebugOpt,
    QuietOpt,
    build_overrides,
    err,
    setup_logging,
    stop_on_signals,
)
from pipeline.config import ConfigError, PipelineConfig, load_config

log = logging.getLogger("dptstream")


def run(
    config: Annotated[Path | None, typer.Argument(help="YAML config (see configs/). Flags override it.")] = None,
    source: Annotated[list[str] | None, typer.Option("--source", "-s", help="[ID=]URI: a file path, file://, or a live rtsp(s)://, http(s):// (incl. HLS) or rtmp(s):// stream. Repeatable.")] = None,
    sink: Annotated[list[str] | None, typer.Option("--sink", help="redis://[user:pass@]host:port/db, rediss://, dir:PATH or video:PATH. Repeatable. Default: $REDIS_URL or redis://127.0.0.1:6379/0.")] = None,
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="TASK=ID|PATH, e.g. segmentation=Intel/dpt-large-ade or depth=./ckpt. Repeatable.")] = None,
    tasks: Annotated[str | None, typer.Option(help="segmentation,depth (default both).")] = None,
    engine: Annotated[str | None, typer.Option(help="auto | tensorrt | torch.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda.")] = None,
    precision: Annotated[str | None, typer.Option(help="auto | fp32 | fp16 | bf16.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Max frames per inference batch.")] = None,
    mask_size: Annotated[str | None, typer.Option("--mask-size", help="WxH | network | source | default (aspect kept, long side = network side).")] = None,
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", help="Prometheus /metrics port (0 = any free port, -1 = off). Default 9108.")] = None,
    redis_prefix: Annotated[str | None, typer.Option("--redis-prefix", help="Key prefix (default dpt).")] = None,
    no_resume: Annotated[bool, typer.Option("--no-resume", help="Publish files again from frame 0 even if already published.")] = False,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="Progress bars (default: on a terminal).")] = None,
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run the pipeline: decode -> preprocess -> infer -> postprocess -> publish."""
    setup_logging(debug, quiet)
    o = build_overrides(source, sink, model, tasks, engine, device, batch_size, mask_size, metrics_port,
                        precision, redis_prefix, no_resume)
    if progress is not None:
        o["progress"] = progress
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
            log.info("%s: %s (%s) input %dx%d", t, e.spec.model_id, e.spec.backend,
                     e.spec.preprocess.width, e.spec.preprocess.height)
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
        with stop_on_signals(pipeline) as signals, view:
            report = pipeline.run(tick=view.update)
        if signals.forced:  # a second signal: its line said what was not written
            return EXIT_INTERRUPTED
        return finish(report, cfg)
    finally:
        rt.close()


def finish(report: Any, cfg: PipelineConfig) -> int:
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
        if s.error:
            err(s.error)
            code = EXIT_FAIL
    unwritten = getattr(report, "unwritten", 0)
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
