"""``dptstream view``: the live wall in the browser (library: pipeline/view/)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.cli.common import DebugOpt
from pipeline.config import ConfigError
from pipeline.redact import redact

if TYPE_CHECKING:
    from pipeline.view import ViewSettings

log = logging.getLogger("dptstream")


def view_cmd(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (its redis sink, prefix and TLS files).")] = None,
    redis_url: Annotated[str | None, typer.Option("--redis", help="Redis URL (default: the config's redis sink, $REDIS_URL or redis://127.0.0.1:6379/0).")] = None,
    redis_prefix: Annotated[str | None, typer.Option("--redis-prefix", help="Key prefix (default dpt).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on. Anything but loopback needs a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0 = any free port).", min=0, max=65535)] = 8088,
    token: Annotated[str | None, typer.Option("--token", envvar="DPTSTREAM_VIEW_TOKEN", show_envvar=True, show_default=False, help="Token viewers must send (Authorization: Bearer TOKEN or ?token=TOKEN).")] = None,
    stale_after: Annotated[float, typer.Option("--stale-after", help="Seconds without a new entry before a tile says stale (0.1..86400).", min=0.1, max=86400)] = 5.0,
    write_timeout: Annotated[float, typer.Option("--write-timeout", help="Seconds a browser may take to accept one update (its buffers full) before it is dropped (0.1..3600).", min=0.1, max=3600)] = 5.0,
    debug: DebugOpt = False,
) -> None:
    """Serve a live wall of every stream in Redis: masks over the frame, depth, zones, alerts, fps, latency."""
    import asyncio
    import signal

    from pipeline.cli.common import EXIT_FAIL, err, queue_url, setup_logging, small_config
    from pipeline.view import ViewError, ViewSettings, check_bind, serve

    setup_logging(debug)
    check_bind(host, token)
    cfg = small_config(config, redis_url, redis_prefix)
    url = queue_url(cfg, redis_url)
    rc = cfg.redis
    settings = ViewSettings(redis_url=url, prefix=rc.prefix, host=host, port=port, token=token,
                            stale_after_s=stale_after, write_timeout_s=write_timeout, ca_file=rc.ca_file,
                            cert_file=rc.cert_file, key_file=rc.key_file)
    _check_credentials(settings)

    def ready(bound: int) -> None:
        shown = f"[{host}]" if ":" in host else host
        log.info("view on http://%s:%d/ (Redis %s, prefix %s%s)", shown, bound, redact(url), rc.prefix,
                 ", token required" if token else "")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop, ready)

    try:
        asyncio.run(main())
    except ViewError as e:
        err(str(e))
        raise typer.Exit(EXIT_FAIL) from e


def _check_credentials(s: ViewSettings) -> None:
    """Refused credentials are a config error (one line, exit 2); an unreachable Redis is not: the view
    starts, says so on every tile and picks Redis up when it comes."""
    import redis

    from pipeline.sinks import error_reason, redis_client

    client = redis_client(s.redis_url, s.ca_file, timeout=2.0, cert_file=s.cert_file, key_file=s.key_file)
    try:
        client.ping()
    except redis.AuthenticationError as e:
        raise ConfigError(f"Redis at {redact(s.redis_url)} refused the credentials ({e})") from e
    except (redis.RedisError, OSError) as e:
        log.warning("Redis at %s is unreachable (%s): serving anyway; tiles say so until it is back",
                    redact(s.redis_url), redact(error_reason(e)))
    finally:
        client.close()


def register(app: typer.Typer) -> None:
    app.command("view")(view_cmd)
