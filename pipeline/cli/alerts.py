"""``dptstream alerts``: the zone rules' start/end events from Redis (``{prefix}:alerts``), as ``show`` does for
frames; ``--follow`` keeps printing them as they come."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from pipeline.cli.common import DebugOpt, check_stream_id, reader_redis, setup_logging
from pipeline.redact import printable, redact

log = logging.getLogger("dptstream")


def alerts(
    stream: Annotated[str | None, typer.Option("--stream", "-s", help="Only this stream's alerts.")] = None,
    count: Annotated[int, typer.Option("--count", "-n", min=0, max=10_000, help="Latest alerts to print first (0..10000).")] = 10,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new alerts until interrupted.")] = False,
    active: Annotated[bool, typer.Option("--active", help="Print the rules active now (then follow, with -f).")] = False,
    redis_url: Annotated[str | None, typer.Option("--redis", help="Redis URL (default $REDIS_URL or redis://127.0.0.1:6379/0).")] = None,
    redis_prefix: Annotated[str, typer.Option("--redis-prefix")] = "dpt",
    debug: DebugOpt = False,
) -> None:
    """Print zone rule alerts (stream, rule, state, frame, coverage / distance) from Redis."""
    setup_logging(debug, quiet=True)
    import json
    import time

    import redis

    from pipeline.sinks import RedisKeys, SinkError, error_reason, redis_client, redis_down
    from pipeline.zones import describe_alert

    if stream is not None:
        check_stream_id(stream)
    url = reader_redis(redis_url, redis_prefix)
    keys = RedisKeys(redis_prefix)
    r = redis_client(url, timeout=10.0)

    def wanted(ev: dict[str, str]) -> bool:
        return stream is None or ev.get("stream") == stream

    def line(entry_id: bytes, ev: dict[str, str]) -> str:
        ts = ev.get("ts", "")
        text = f"{float(ts):.3f}  {describe_alert(ev)}" if ts else describe_alert(ev)
        return printable(text, lines=False)  # fields written by another program cannot drive the terminal

    try:
        if active:
            now = r.hgetall(keys.alerts_active)
            rows = sorted((json.loads(v) for v in now.values()), key=lambda e: (e.get("stream"), e.get("rule")))
            rows = [e for e in rows if wanted(e)]
            print(f"{len(rows)} active" + (":" if rows else ""))
            for e in rows:
                print(f"  {printable(describe_alert(e), lines=False)}")
        last = b"$"
        entries = r.xrevrange(keys.alerts, count=count * 20 if stream else count) if count else []
        if entries:
            last = entries[0][0]
        if not active:
            shown = [(i, {k.decode(): v.decode() for k, v in f.items()}) for i, f in reversed(entries)]
            shown = [x for x in shown if wanted(x[1])][-count:] if count else []
            if not shown and not follow:
                print(f"no alerts under {redis_prefix}: in {redact(url)}")
            for i, ev in shown:
                print(line(i, ev))
        away = False
        while follow:
            try:
                got = r.xread({keys.alerts: last}, block=2000, count=100)
            except redis_down() as e:  # following outlives an outage, as tail -F
                if not away:
                    log.warning("Redis at %s is unreachable (%s); still following, retrying every second",
                                redact(url), error_reason(e))
                    away = True
                time.sleep(1.0)
                continue
            if away:
                log.warning("Redis at %s is reachable again", redact(url))
                away = False
            for _key, items in got or []:
                for i, f in items:
                    last = i
                    ev = {k.decode(): v.decode() for k, v in f.items()}
                    if wanted(ev):
                        print(line(i, ev), flush=True)
    except KeyboardInterrupt:
        return
    except (redis.RedisError, OSError) as e:
        raise SinkError(f"cannot read Redis at {redact(url)} ({error_reason(e)})") from e


def register(app: typer.Typer) -> None:
    app.command()(alerts)
