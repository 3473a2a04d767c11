"""Helpers every command module shares: logging set-up, flag -> config overrides, signal handling, exit codes
and the one-line error report."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.config import ConfigError, PipelineConfig, parse_source
from pipeline.configfile import load_config
from pipeline.redact import printable, redact, redact_text, shorten

log = logging.getLogger("dptstream")

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# Options more than one command declares, declared once (``run`` and ``worker`` share the engine and output ones)
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")]
ConfigArg = Annotated[Path | None, typer.Argument(help="YAML config (see configs/). Flags override it.")]
ModelOpt = Annotated[list[str] | None, typer.Option("--model", "-m", help="TASK=ID|PATH, e.g. segmentation=Intel/dpt-large-ade or depth=./ckpt. Repeatable.")]
TasksOpt = Annotated[str | None, typer.Option("--tasks", help="segmentation,depth (default both).")]
EngineOpt = Annotated[str | None, typer.Option("--engine", help="auto | tensorrt | openvino | torch.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda.")]
PrecisionOpt = Annotated[str | None, typer.Option("--precision", help="auto | fp32 | fp16 | bf16.")]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", help="Max frames per inference batch.")]
MaskSizeOpt = Annotated[str | None, typer.Option("--mask-size", help="WxH | network | source | default (aspect kept, long side = network side).")]
MetricsPortOpt = Annotated[int | None, typer.Option("--metrics-port", help="Prometheus /metrics port (0 = any free port, -1 = off). Default 9108.")]
PrefixOpt = Annotated[str | None, typer.Option("--redis-prefix", help="Key prefix (default dpt).")]
ProgressOpt = Annotated[bool | None, typer.Option("--progress/--no-progress", help="Progress bars (default: on a terminal).")]
MaxSideOpt = Annotated[int | None, typer.Option("--max-side", help="engine.max_side: for a checkpoint whose processor does not resize (facebook/dpt-dinov2-*), resize larger sources to this longest side first (not transformers' exact output).")]


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
    handler.addFilter(RedactFilter())
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


class RedactFilter(logging.Filter):
    """Hides the password of every URI in every log record, whichever module logged it, and escapes its control
    characters."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a malformed record: let logging report it as it would
            return True
        clean = printable(redact_text(msg))  # a name read from Redis or a file cannot drive the terminal
        if clean != msg:
            record.msg, record.args = clean, None
        return True


def set_max_side(o: dict[str, Any], max_side: int | None) -> None:
    """``--max-side N`` into the overrides as ``engine.max_side`` (validated with the rest of the config)."""
    if max_side is not None:
        o.setdefault("engine", {})["max_side"] = max_side


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
    if tasks is not None:  # "" is given, and wrong: flags are tested for presence, never for truthiness
        ts = [t.strip() for t in tasks.split(",") if t.strip()]
        if not ts:
            raise ConfigError("--tasks is empty: use segmentation, depth or segmentation,depth")
        bad = [t for t in ts if t not in ("segmentation", "depth")]
        if bad:
            raise ConfigError(f"--tasks: unknown task {bad[0]!r} (use segmentation, depth or both)")
        o["tasks"] = ts
    given = {"backend": engine, "device": device, "batch_size": batch_size, "precision": precision}
    eng = {k: v for k, v in given.items() if v is not None}
    if eng:
        o["engine"] = eng
    if mask_size is not None:
        o["mask_size"] = mask_size
    if metrics_port is not None:
        o["metrics"] = {"port": None if metrics_port == -1 else metrics_port}  # other negatives fail validation
    if redis_prefix is not None:
        o["redis"] = {"prefix": redis_prefix}
    if no_resume:
        o["resume"] = False
    return o


class StopOnSignals:
    """First SIGINT/SIGTERM: call ``target.request_stop()`` (stop reading; what was decoded drains to the
    sinks, and a sink that cannot write gives up after ``redis.retry_max_s``) and log ``what``. A second
    signal exits at once, saying how many results were not written (``target.unwritten()``, when it has one):
    through ``target.abort_now()`` when the target has one (then ``forced`` is set and the caller returns
    :data:`EXIT_INTERRUPTED`), else by raising ``SystemExit``."""

    def __init__(self, target: Any, what: str = "draining decoded frames to the sinks") -> None:
        self.target = target
        self.what = what
        self.count = 0
        self.forced = False  # a second signal came: the caller exits with EXIT_INTERRUPTED, nothing more to say
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count == 1:
            log.warning("%s: stopping; %s (again to quit at once)", signal.Signals(signum).name, self.what)
            self.target.request_stop()
        elif not self.forced:
            self.forced = True
            count = getattr(self.target, "unwritten", None)
            n = count() if count is not None else 0
            name = signal.Signals(signum).name
            err(f"stopped at once by a second {name}: {n} results not written (a rerun resumes after the last "
                "written frame)" if n else f"stopped at once by a second {name}")
            abort = getattr(self.target, "abort_now", None)
            if abort is None:
                raise SystemExit(EXIT_INTERRUPTED)
            # the stages stop after their current item and the run returns at once; unwinding the main thread
            # with SystemExit while they compute would kill the process mid-computation
            abort()

    def __enter__(self) -> StopOnSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)


def err(msg: str) -> None:
    """The one error line; every URI in it is redacted and control characters escaped, whatever produced it."""
    print(f"dptstream: error: {printable(redact_text(msg), lines=False)}", file=sys.stderr, flush=True)


class KeyReads:
    """Reads of one Redis client that go on past a wrong-typed key: each refusal is one line naming the key,
    and :attr:`bad` remembers that one happened (the command then exits 1, after printing the rest)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.bad = False

    def read(self, kind: str, key: str, what: str, fn: Any, *args: Any) -> Any:
        """``fn(*args)``, or None after one line naming ``key`` when it holds another type than ``kind``."""
        import redis

        from pipeline.sinks import key_problem

        try:
            return fn(*args)
        except redis.ResponseError as e:
            err(key_problem(self.client, e, {key: kind}, what))
            self.bad = True
            return None


def report_error(e: Exception) -> int:
    from engines import EngineError, EngineUsageError
    from pipeline.runtime import PipelineError
    from pipeline.sinks import SinkError, error_reason
    from pipeline.sources import SourceError

    if isinstance(e, ConfigError | EngineUsageError):
        err(str(e))
        return EXIT_USAGE
    if isinstance(e, SourceError | EngineError | SinkError | PipelineError):
        err(str(e))
        return EXIT_FAIL
    msg = shorten(error_reason(e)) if str(e).strip() else ""
    err(f"unexpected {type(e).__name__}: {msg} (run with --debug for the traceback)")
    return EXIT_FAIL


def reader_redis(redis_url: str | None, redis_prefix: str) -> str:
    """The Redis a reading command (``show``, ``alerts``) uses: ``--redis``, else ``$REDIS_URL``, else the local
    default; the URL and the key prefix are checked first, each a one-line usage error."""
    import os

    from pipeline.config import NAME_RE, check_redis_url

    url = redis_url or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    if not NAME_RE.fullmatch(redis_prefix):
        raise ConfigError(f"invalid --redis-prefix {shorten(redis_prefix)!r}: use 1-64 of A-Z a-z 0-9 . _ : -")
    if url.split(":", 1)[0].lower() not in ("redis", "rediss"):
        raise ConfigError(f"{shorten(redact(url))!r} is not a Redis URL: use redis://host:port/db or rediss://")
    try:
        check_redis_url(url)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return url


def queue_url(cfg: PipelineConfig, url: str | None = None) -> str:
    """The job queue's Redis: ``url``, else the config's first redis:// or rediss:// sink."""
    if url:
        if url.split(":", 1)[0].lower() not in ("redis", "rediss"):
            raise ConfigError(f"{redact(url)!r} is not a Redis URL: use redis://host:port/db or rediss://")
        return url
    for s in cfg.sinks:
        if s.split(":", 1)[0].lower() in ("redis", "rediss"):
            return s
    raise ConfigError("no Redis for the job queue: pass --redis redis://HOST:PORT/DB (or set REDIS_URL)")


def connect(url: str, cfg: PipelineConfig, timeout: float = 5.0) -> Any:
    import redis

    from pipeline.sinks import error_reason, redis_client

    client = redis_client(url, cfg.redis.ca_file, timeout=timeout)
    try:
        client.ping()
    except redis.AuthenticationError as e:
        raise ConfigError(f"Redis at {redact(url)} refused the credentials ({e})") from e
    except redis.RedisError as e:
        from pipeline.sinks import SinkError

        # a runtime failure (exit 1, as `run` gives), not a usage error: the same command works once Redis is up
        raise SinkError(f"cannot reach Redis at {redact(url)} ({error_reason(e)}); is redis-server running?") from e
    return client


def check_stream_id(stream: str) -> None:
    """A ``--stream`` / STREAM argument that cannot be a stream id is a usage error naming it."""
    from pipeline.frames import STREAM_ID_RULE, valid_stream_id

    if not valid_stream_id(stream):
        raise ConfigError(f"invalid stream id {shorten(stream)!r}: {STREAM_ID_RULE}")


def small_config(config: Path | None, redis_url: str | None, prefix: str | None) -> PipelineConfig:
    o: dict[str, Any] = {}
    if redis_url:
        o["sinks"] = [redis_url]
    if prefix:
        o["redis"] = {"prefix": prefix}
    return load_config(config, o)
