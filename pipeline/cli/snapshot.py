"""``dptstream snapshot``: one stream's latest Redis entry as a PNG (see pipeline/overlay.py:render_entry)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.common import DebugOpt, PrefixOpt, check_stream_id
from pipeline.config import ConfigError
from pipeline.redact import printable, redact


def snapshot_cmd(
    stream: Annotated[str, typer.Argument(help="Stream id.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="PNG to write (default STREAM.png).")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (its redis sink and prefix).")] = None,
    redis_url: Annotated[str | None, typer.Option("--redis", help="Redis URL (default: the config's redis sink, $REDIS_URL or redis://127.0.0.1:6379/0).")] = None,
    redis_prefix: PrefixOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Write a PNG of what the pipeline sees in STREAM's latest frame: class colours (over the frame's
    thumbnail when redis.thumbnail is on) beside a depth picture built from the depth summary; the configured
    zones outlined, red where a rule is active."""
    import redis
    from PIL import Image

    from pipeline.cli.common import KeyReads, connect, err, queue_url, setup_logging, small_config
    from pipeline.overlay import render_entry
    from pipeline.sinks import RedisKeys, key_problem
    from pipeline.sinks.entries import EntryError, check_entry
    from pipeline.view.render import zone_drawings
    from pipeline.view.stats import active_zones, parse_active_alerts, parse_labels, parse_zones

    setup_logging(debug, quiet=True)
    check_stream_id(stream)
    cfg = small_config(config, redis_url, redis_prefix)
    url = queue_url(cfg, redis_url)
    client = connect(url, cfg)
    keys = RedisKeys(cfg.redis.prefix)
    try:
        entries = client.xrevrange(keys.frames(stream), count=1)
    except redis.ResponseError as e:
        err(f"stream {stream!r}: " + key_problem(client, e, {keys.frames(stream): "stream"}, "reading it"))
        raise typer.Exit(1) from None
    reads = KeyReads(client)
    read = reads.read

    if not entries:
        members = read("set", keys.streams, "listing the streams", client.smembers, keys.streams) or set()
        known = sorted(printable(x.decode("utf-8", "backslashreplace"), lines=False) for x in members)
        hint = f"; known streams: {', '.join(known[:10])}" if known else ""
        missing = f"no entries for stream {stream!r} under {cfg.redis.prefix}: at {redact(url)}{hint}"
        if reads.bad:  # a wrong-typed key is the trouble to fix first (exit 1, as show and status give)
            err(missing)
            raise typer.Exit(1)
        raise ConfigError(missing)
    eid, raw = entries[0]
    try:
        check_entry(stream, eid.decode(), raw, images=True)
    except EntryError as e:
        err(str(e))
        raise typer.Exit(1) from None
    fields = {k.decode(): v for k, v in raw.items()}
    meta = read("hash", keys.meta, "reading the labels and zones", client.hmget, keys.meta, ["labels", "zones"])
    labels_raw, zones_raw = meta if meta is not None else (None, None)
    labels = parse_labels(labels_raw)
    # zones and active alerts read as the view reads them (one parser, one drawing: the pictures agree)
    zones = [z for z in parse_zones(zones_raw) if z.applies_to(stream)]
    alerts = read("hash", keys.alerts_active, "reading the active alerts", client.hgetall, keys.alerts_active)
    active = active_zones(parse_active_alerts(alerts or {}).get(stream, []))
    picture = render_entry(fields, labels, zones=zone_drawings(zones, active))
    target = out or Path(f"{stream}.png")
    try:
        Image.fromarray(picture).save(target, format="PNG")
    except OSError as e:
        raise ConfigError(f"cannot write {target} ({e.strerror or e})") from e
    frame = int(fields["frame"])
    extra = "" if "thumb" in fields else " (no frame thumbnail in Redis: set redis.thumbnail to include one)"
    print(f"{target}: {stream} frame {frame}, {picture.shape[1]}x{picture.shape[0]}{extra}")
    if reads.bad:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("snapshot")(snapshot_cmd)
