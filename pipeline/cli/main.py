"""``dptstream`` command line. Config is read once here (YAML + flags + environment) and passed down."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.config import ConfigError, PipelineConfig, load_config, parse_source, redact

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Stream video through DPT segmentation + depth and publish results to Redis.")
log = logging.getLogger("dptstream")

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")]


def setup_logging(debug: bool = False, quiet: bool = False) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    handler: logging.Handler
    if sys.stderr.isatty():
        handler = RichHandler(console=Console(stderr=True), show_path=debug, rich_tracebacks=debug,
                              log_time_format="%H:%M:%S")
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("transformers", "urllib3", "httpx", "filelock", "huggingface_hub", "PIL", "libav"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.ERROR)
    # PyAV's FFmpeg log forwarding stays off (its default): with it on, FFmpeg's decoder threads need the GIL
    # to log while the decode thread holds it closing the codec, which deadlocks on an early stop. FFmpeg's
    # own stderr logging is quietened instead: our one-line errors say what went wrong.
    import av.logging

    av.logging.set_libav_level(av.logging.WARNING if debug else av.logging.PANIC)


def build_overrides(sources: list[str] | None, sinks: list[str] | None, models: list[str] | None,
                    tasks: str | None, engine: str | None, device: str | None, batch_size: int | None,
                    mask_size: str | None, metrics_port: int | None, precision: str | None = None,
                    redis_prefix: str | None = None, no_resume: bool = False) -> dict[str, Any]:
    o: dict[str, Any] = {}
    if sources:
        o["sources"] = [parse_source(s).model_dump(exclude_defaults=True) | {"uri": parse_source(s).uri}
                        for s in sources]
    if sinks:
        o["sinks"] = list(sinks)
    if models:
        m: dict[str, str] = {}
        for spec in models:
            task, sep, mid = spec.partition("=")
            if not sep or task not in ("segmentation", "depth") or not mid:
                raise ConfigError(f"--model {spec!r}: use TASK=ID|PATH with TASK segmentation or depth")
            m[task] = mid
        o["models"] = m
    if tasks:
        ts = [t.strip() for t in tasks.split(",") if t.strip()]
        bad = [t for t in ts if t not in ("segmentation", "depth")]
        if bad:
            raise ConfigError(f"--tasks: unknown task {bad[0]!r} (use segmentation, depth or both)")
        o["tasks"] = ts
    given = {"backend": engine, "device": device, "batch_size": batch_size, "precision": precision}
    eng = {k: v for k, v in given.items() if v}
    if eng:
        o["engine"] = eng
    if mask_size:
        o["mask_size"] = mask_size
    if metrics_port is not None:
        o["metrics"] = {"port": None if metrics_port < 0 else metrics_port}
    if redis_prefix:
        o["redis"] = {"prefix": redis_prefix}
    if no_resume:
        o["resume"] = False
    return o


@app.command()
def run(
    config: Annotated[Path | None, typer.Argument(help="YAML config (see configs/). Flags override it.")] = None,
    source: Annotated[list[str] | None, typer.Option("--source", "-s", help="[ID=]URI: a file path, file://, rtsp:// or rtsps://. Repeatable.")] = None,
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
    from pipeline.app import start_runtime
    from pipeline.progress import ProgressView
    from pipeline.runtime import Pipeline
    from pipeline.sources import probe_file

    if not cfg.sources:
        raise ConfigError("no sources: pass --source PATH_OR_URI (repeatable) or list sources in the config file")
    totals: dict[str, int | None] = {}
    for s in cfg.sources:
        totals[s.id] = None if s.is_live else (probe_file(s)["frames"] or None)
        if s.loop:
            totals[s.id] = None
    holder: dict[str, Any] = {}

    def health() -> tuple[bool, bool, dict[str, Any]]:
        p = holder.get("pipeline")
        if p is None:
            return True, False, {"state": "starting"}
        fn = getattr(p, "health", None)
        if fn is not None:
            return fn()  # type: ignore[no-any-return]
        return True, p.running, {}

    rt = start_runtime(cfg, health=health)
    try:
        for t, e in rt.engines.items():
            log.info("%s: %s (%s) input %dx%d", t, e.spec.model_id, e.spec.backend,
                     e.spec.preprocess.width, e.spec.preprocess.height)
        log.info("sinks: %s", ", ".join(s.name for s in rt.sinks))
        if rt.port is not None:
            log.info("metrics on http://%s:%d/metrics", cfg.metrics.host, rt.port)
        pipeline = Pipeline(cfg, rt.engines, rt.sinks, rt.metrics, live_options=live_options(cfg))
        pipeline.build()
        holder["pipeline"] = pipeline
        show = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
        view = ProgressView(rt.metrics, totals, pipeline.report, enabled=show)
        with stop_on_signals(pipeline), view:
            report = pipeline.run(tick=view.update)
        return finish(report, cfg)
    finally:
        rt.close()


def live_options(cfg: PipelineConfig) -> dict[str, Any]:
    return {"live": cfg.live}


class stop_on_signals:
    """First SIGINT/SIGTERM: call ``target.request_stop()`` (stop reading; what was decoded drains to the
    sinks) and log ``what``. A second signal exits at once."""

    def __init__(self, target: Any, what: str = "draining decoded frames to the sinks") -> None:
        self.target = target
        self.what = what
        self.count = 0
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count == 1:
            log.warning("%s: stopping; %s (again to quit at once)", signal.Signals(signum).name, self.what)
            self.target.request_stop()
        else:
            raise SystemExit(EXIT_INTERRUPTED)

    def __enter__(self) -> stop_on_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)


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
    if report.fatal:
        err(report.fatal)
        code = EXIT_FAIL
    return code


def err(msg: str) -> None:
    print(f"dptstream: error: {msg}", file=sys.stderr, flush=True)


@app.command()
def sample(
    out: Annotated[Path, typer.Argument(help="Directory for the sample clip and checkpoints.")] = Path("sample"),
    frames: Annotated[int, typer.Option(help="Frames in the clip.")] = 48,
    width: int = 1280,
    height: int = 720,
    debug: DebugOpt = False,
) -> None:
    """Generate a real-content 1280x720 H.264 clip and small random-weight DPT checkpoints (no model hub)."""
    setup_logging(debug)
    from pipeline.sample import make_sample

    paths = make_sample(out, frames=frames, width=width, height=height)
    for k, v in paths.items():
        print(f"{k}: {v}")


@app.command()
def show(
    stream: Annotated[str | None, typer.Argument(help="Stream id (default: every stream).")] = None,
    count: Annotated[int, typer.Option("--count", "-n", help="Latest entries per stream.")] = 1,
    redis_url: Annotated[str | None, typer.Option("--redis", help="Redis URL (default $REDIS_URL or redis://127.0.0.1:6379/0).")] = None,
    redis_prefix: Annotated[str, typer.Option("--redis-prefix")] = "dpt",
    debug: DebugOpt = False,
) -> None:
    """Print the latest published results from Redis (classes by name, depth summary)."""
    setup_logging(debug, quiet=True)
    import os

    from pipeline.frames import valid_stream_id
    from pipeline.sinks import RedisKeys, redis_client

    url = redis_url or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    keys = RedisKeys(redis_prefix)
    try:
        r = redis_client(url)
        meta = r.hgetall(keys.meta)
        ids = [stream] if stream else sorted(x.decode() for x in r.smembers(keys.streams))
    except Exception as e:
        raise ConfigError(f"cannot read Redis at {redact(url)} ({str(e).splitlines()[0]})") from e
    if stream and not valid_stream_id(stream):
        raise ConfigError(f"invalid stream id {stream!r}: use 1-64 of A-Z a-z 0-9 . _ -")
    labels = json.loads(meta.get(b"labels", b"{}"))
    if not ids:
        print(f"no streams under {redis_prefix}: in {redact(url)}")
    for sid in ids:
        entries = r.xrevrange(keys.frames(sid), count=count)
        if not entries:
            print(f"{sid}: no entries")
        for _id, f in reversed(entries):
            fields = {k.decode(): v for k, v in f.items()}
            line = [f"{sid} frame {int(fields['frame'])} pts {float(fields['pts']):.3f}s"]
            if b"classes" in f:
                classes = json.loads(fields["classes"])
                top = sorted(classes.items(), key=lambda kv: -kv[1])[:5]
                line.append(f"mask {int(fields['mask_w'])}x{int(fields['mask_h'])}: "
                            + ", ".join(f"{labels.get(c, c)} {v:.0%}" for c, v in top))
            if b"depth" in f:
                d = json.loads(fields["depth"])
                line.append(f"depth p05/p50/p95 {d['p05']:.3g}/{d['p50']:.3g}/{d['p95']:.3g} ({d['kind']})")
            line.append(f"latency {float(fields['latency_ms']):.0f} ms")
            print("  ".join(line))


def _register_optional() -> None:
    """Commands that live in their own modules (GPU build, benchmark, batch jobs)."""
    for mod in ("pipeline.cli_engine", "pipeline.bench", "pipeline.jobs_cli", "pipeline.overlay_cli"):
        try:
            m = __import__(mod, fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue
            raise
        m.register(app)


_register_optional()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        rc = app(args=argv, prog_name="dptstream", standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)  # click returns typer.Exit's code here instead of raising
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        sys.exit(code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:
        import click

        if isinstance(e, click.exceptions.Abort):
            err("interrupted")
            sys.exit(EXIT_INTERRUPTED)
        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if debug:
            raise
        sys.exit(report_error(e))


def report_error(e: Exception) -> int:
    from engines import EngineError
    from pipeline.runtime import PipelineError
    from pipeline.sinks import SinkError
    from pipeline.sources import SourceError

    if isinstance(e, ConfigError):
        err(str(e))
        return EXIT_USAGE
    if isinstance(e, SourceError | EngineError | SinkError | PipelineError):
        err(str(e))
        return EXIT_FAIL
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    err(f"unexpected {type(e).__name__}: {msg} (run with --debug for the traceback)")
    return EXIT_FAIL


if __name__ == "__main__":
    main()
