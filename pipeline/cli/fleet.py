"""``dptstream cameras add|remove|list|import`` (the fleet's desired cameras in Redis) and ``dptstream node``
(a process that runs its share of them)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.cli.common import EXIT_FAIL, DebugOpt, QuietOpt, err, reader_redis, setup_logging
from pipeline.config import ConfigError
from pipeline.redact import redact

log = logging.getLogger("dptstream")

RedisOpt = Annotated[str | None, typer.Option("--redis", help="Redis URL (default $REDIS_URL or redis://127.0.0.1:6379/0).")]
PrefixOpt = Annotated[str, typer.Option("--redis-prefix", help="Key prefix (default dpt).")]

cameras_app = typer.Typer(no_args_is_help=True, help="The fleet's cameras (desired state in Redis; nodes run them).")


def _registry(redis_url: str | None, prefix: str) -> Any:
    import redis

    from engines.base import error_reason
    from pipeline.fleet.keys import FleetKeys
    from pipeline.fleet.registry import CameraRegistry
    from pipeline.sinks import SinkError, redis_client

    url = reader_redis(redis_url, prefix)
    client = redis_client(url, timeout=10.0)
    try:
        client.ping()
    except redis.RedisError as e:
        raise SinkError(f"cannot reach Redis at {redact(url)} ({error_reason(e)}); is redis-server running?") from e
    return CameraRegistry(client, FleetKeys(prefix))


def add(
    camera_id: Annotated[str, typer.Argument(metavar="ID", help="Camera id (1-64 of A-Z a-z 0-9 . _ -).")],
    uri: Annotated[str, typer.Argument(metavar="URI", help="rtsp://..., http(s)://, a file path; ${VAR} is expanded on each node.")],
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="key=value of a sources: entry (rtsp_transport=udp, live=true, ...). Repeatable.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Replace a camera with the same id.")] = False,
    redis_url: RedisOpt = None,
    redis_prefix: PrefixOpt = "dpt",
    debug: DebugOpt = False,
) -> None:
    """Add a camera to the fleet (a node starts it within about a second)."""
    from pipeline.fleet.registry import parse_options, validate_entry

    setup_logging(debug, quiet=True)
    entry = validate_entry({"id": camera_id, "uri": uri, **parse_options(option or [])})
    _registry(redis_url, redis_prefix).add([entry], replace)
    print(f"camera {camera_id} {'set' if replace else 'added'}")


def remove(
    camera_id: Annotated[str, typer.Argument(metavar="ID")],
    redis_url: RedisOpt = None,
    redis_prefix: PrefixOpt = "dpt",
    debug: DebugOpt = False,
) -> None:
    """Remove a camera from the fleet (its node stops it, draining what it decoded)."""
    from pipeline.frames import STREAM_ID_RULE, valid_stream_id

    setup_logging(debug, quiet=True)
    if not valid_stream_id(camera_id):
        raise ConfigError(f"invalid camera id {camera_id[:80]!r}: {STREAM_ID_RULE}")
    if not _registry(redis_url, redis_prefix).remove(camera_id):
        err(f"no camera {camera_id!r} in the registry (dptstream cameras list shows them)")
        raise typer.Exit(EXIT_FAIL)
    print(f"camera {camera_id} removed")


def list_(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per camera.")] = False,
    lease_s: Annotated[float, typer.Option("--lease-s", min=0.1, help="The fleet's fleet.lease_s (liveness of nodes).")] = 5.0,
    redis_url: RedisOpt = None,
    redis_prefix: PrefixOpt = "dpt",
    debug: DebugOpt = False,
) -> None:
    """The desired cameras: owner node, state, frames/s and the age of the last frame."""
    import json

    from pipeline.fleet.status import camera_rows

    setup_logging(debug, quiet=True)
    reg = _registry(redis_url, redis_prefix)
    rows = camera_rows(reg.client, redis_prefix, lease_s)
    if as_json:
        for r in rows:
            print(json.dumps(r.as_json()))
        return
    print(f"{len(rows)} camera(s)" + (":" if rows else ""))
    for r in rows:
        age = "-" if r.age_s is None else f"{r.age_s:.1f}s"
        print(f"  {r.id:<20} {r.state:<10} node={r.node or '-':<20} fps={r.fps:<6.1f} last={age:<8} {r.uri}")


def import_(
    file: Annotated[Path, typer.Argument(metavar="FILE.yaml", help="A YAML with a sources: list (a config file works).")],
    replace: Annotated[bool, typer.Option("--replace", help="Replace cameras with the same ids.")] = False,
    redis_url: RedisOpt = None,
    redis_prefix: PrefixOpt = "dpt",
    debug: DebugOpt = False,
) -> None:
    """Add every camera of a YAML file's sources: list (all or none)."""
    from pipeline.config import parse_source
    from pipeline.configfile import read_yaml
    from pipeline.fleet.registry import validate_entry
    from pipeline.redact import shorten

    setup_logging(debug, quiet=True)
    data = read_yaml(file)
    items = data.get("sources") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{shorten(str(file))}: no cameras: give a sources: list of entries (id, uri, ...)")
    entries = []
    for i, raw in enumerate(items):
        if isinstance(raw, str):
            raw = {"id": parse_source(raw).id, "uri": parse_source(raw).uri}
        elif isinstance(raw, dict) and "id" not in raw and isinstance(raw.get("uri"), str):
            raw = {"id": parse_source(raw["uri"]).id, **raw}
        where = f"{shorten(str(file))}: sources[{i}]"
        try:
            entries.append(validate_entry(raw, where))
        except ConfigError as e:
            raise ConfigError(str(e) if str(e).startswith(where) else f"{where}: {e}") from e
    ids = [e["id"] for e in entries]
    dup = next((c for c in ids if ids.count(c) > 1), None)
    if dup is not None:
        raise ConfigError(f"{shorten(str(file))}: two cameras share the id {dup!r}")
    _registry(redis_url, redis_prefix).add(entries, replace)
    print(f"{len(entries)} camera(s) imported")


def node(
    config: Annotated[Path | None, typer.Argument(help="YAML config (models, engine, sinks, zones, fleet:); no sources:.")] = None,
    sink: Annotated[list[str] | None, typer.Option("--sink", help="redis://host:port/db (default $REDIS_URL or redis://127.0.0.1:6379/0).")] = None,
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="TASK=ID|PATH. Repeatable.")] = None,
    max_cameras: Annotated[int | None, typer.Option("--max-cameras", help="fleet.max_cameras: this node's capacity.")] = None,
    node_id: Annotated[str | None, typer.Option("--node-id", help="fleet.node_id (default HOST-PID).")] = None,
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", help="/metrics and /readyz port (0 = any, -1 = off).")] = None,
    redis_prefix: Annotated[str | None, typer.Option("--redis-prefix", help="Key prefix (default dpt).")] = None,
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run this machine's share of the fleet's cameras (see `dptstream cameras`); SIGTERM hands them over."""
    from pipeline.cli.common import EXIT_INTERRUPTED, EXIT_OK, StopOnSignals, build_overrides
    from pipeline.configfile import load_config
    from pipeline.fleet.node import start_node

    setup_logging(debug, quiet)
    o = build_overrides(None, sink, model, None, None, None, None, None, metrics_port, None, redis_prefix)
    fleet = {k: v for k, v in {"max_cameras": max_cameras, "node_id": node_id}.items() if v is not None}
    if fleet:
        o["fleet"] = fleet
    cfg = load_config(config, o)
    run = start_node(cfg)
    try:
        with StopOnSignals(run.node, "handing the cameras over and draining") as signals:
            report = run.wait()
    finally:
        run.close()
    if signals.forced:
        raise typer.Exit(EXIT_INTERRUPTED)
    if report.fatal:
        err(report.fatal)
        raise typer.Exit(EXIT_FAIL)
    raise typer.Exit(EXIT_OK)


cameras_app.command("add")(add)
cameras_app.command("remove")(remove)
cameras_app.command("list")(list_)
cameras_app.command("import")(import_)


def register(app: typer.Typer) -> None:
    app.add_typer(cameras_app, name="cameras")
    app.command("node")(node)
