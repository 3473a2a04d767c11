"""``dptstream show``: the latest results from Redis, with class names."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from pipeline.cli.common import DebugOpt, KeyReads, check_stream_id, err, reader_redis, setup_logging
from pipeline.redact import printable, redact


def zone_summary(zones: dict[str, Any], labels: dict[str, str], depth_kind: str | None) -> str:
    """An entry's ``zones`` field in brief: per zone its top class by coverage and its nearest depth, with units
    (``zones: door person 31% nearest 1.20 m; bay wall 80% nearest 0.83 relative inverse``)."""
    parts = []
    for name, z in zones.items():
        bits = [name]
        coverage = z.get("coverage") or {}
        if coverage:
            cid, frac = max(coverage.items(), key=lambda kv: (kv[1], -int(kv[0])))
            bits.append(f"{labels.get(str(cid), str(cid))} {float(frac):.0%}")
        elif "coverage" in z:
            bits.append("no classes")
        nearest = (z.get("depth") or {}).get("nearest")
        if nearest is not None:
            if depth_kind == "metric":
                bits.append(f"nearest {float(nearest):.2f} m")
            else:
                bits.append(f"nearest {float(nearest):.3g} relative inverse (larger = nearer)")
        parts.append(" ".join(bits))
    return "zones: " + "; ".join(parts) if parts else "zones: none"


def show(
    stream: Annotated[str | None, typer.Argument(help="Stream id (default: every stream).")] = None,
    count: Annotated[int, typer.Option("--count", "-n", min=1, max=10_000, help="Latest entries per stream (1..10000).")] = 1,
    redis_url: Annotated[str | None, typer.Option("--redis", help="Redis URL (default $REDIS_URL or redis://127.0.0.1:6379/0).")] = None,
    redis_prefix: Annotated[str, typer.Option("--redis-prefix")] = "dpt",
    debug: DebugOpt = False,
) -> None:
    """Print the latest published results from Redis (classes by name, depth summary). An unreadable entry or
    stream gets one line of its own (the others are printed) and the exit status 1."""
    setup_logging(debug, quiet=True)
    import redis

    from pipeline.frames import valid_stream_id
    from pipeline.sinks import RedisKeys, error_reason, key_problem, redis_client
    from pipeline.sinks.entries import EntryError, check_entry, meta_labels

    if stream is not None:
        check_stream_id(stream)
    url = reader_redis(redis_url, redis_prefix)
    keys = RedisKeys(redis_prefix)
    try:
        r = redis_client(url)
        reads = KeyReads(r)
        meta = reads.read("hash", keys.meta, "reading the class names", r.hget, keys.meta, "labels")
        members = [stream.encode()] if stream else reads.read("set", keys.streams, "listing the streams", r.smembers,
                                                        keys.streams)
    except Exception as e:
        from pipeline.sinks import SinkError

        raise SinkError(f"cannot read Redis at {redact(url)} ({error_reason(e)})") from e  # exit 1
    ids = sorted(x.decode("utf-8", "backslashreplace") for x in members or ())
    try:
        labels = meta_labels(meta)
    except ValueError as e:
        err(f"{keys.meta}: {e}; classes are shown by id")
        labels = {}
        reads.bad = True
    if not ids and members is not None:
        print(f"no streams under {redis_prefix}: in {redact(url)}")
    for sid in ids:
        if not valid_stream_id(sid):
            err(f"Redis key {keys.streams} lists '{printable(sid[:80], lines=False)}', which is no stream id: "
                f"SREM it from {keys.streams}")
            reads.bad = True
            continue
        try:
            entries = r.xrevrange(keys.frames(sid), count=count)
        except redis.ResponseError as e:
            err(f"stream {sid!r}: " + key_problem(r, e, {keys.frames(sid): "stream"}, "reading it"))
            reads.bad = True
            continue
        if not entries:
            print(f"{sid}: no entries")
        for eid, f in reversed(entries):
            try:
                check_entry(sid, eid.decode(), f)
            except EntryError as e:
                err(str(e))
                reads.bad = True
                continue
            fields = {k.decode(): v for k, v in f.items()}
            line = [f"{sid} frame {int(fields['frame'])} pts {float(fields['pts']):.3f}s"]
            if b"classes" in f:
                classes = json.loads(fields["classes"])
                top = sorted(classes.items(), key=lambda kv: -kv[1])[:5]
                line.append(f"mask {int(fields['mask_w'])}x{int(fields['mask_h'])}: "
                            + ", ".join(f"{labels.get(c, c)} {v:.0%}" for c, v in top))
            if b"depth" in f:
                d = json.loads(fields["depth"])
                if any(d.get(k) is None for k in ("p05", "p50", "p95")):
                    line.append("depth not finite on this frame")
                elif d.get("kind") == "metric":
                    line.append(f"depth (m) nearest {d['p05']:.2f} m, median {d['p50']:.2f} m, "
                                f"p95 {d['p95']:.2f} m (metric)")
                else:
                    line.append(f"depth p05/p50/p95 {d['p05']:.3g}/{d['p50']:.3g}/{d['p95']:.3g} "
                                f"({d.get('kind', 'relative_inverse')}: relative, larger = nearer)")
            if b"zones" in f:
                kind = json.loads(fields["depth"]).get("kind", "relative_inverse") if b"depth" in f else None
                line.append(zone_summary(json.loads(fields["zones"]), labels, kind))
            line.append(f"latency {float(fields['latency_ms']):.0f} ms")
            print("  ".join(line), flush=True)
    if reads.bad:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(show)
