"""``dptstream submit | worker | status``: offline batch jobs on a Redis stream (see pipeline/jobs.py)."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.cli.common import (
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
    TasksOpt,
    connect,
    queue_url,
    small_config,
)
from pipeline.config import ConfigError, PipelineConfig
from pipeline.configfile import load_config
from pipeline.redact import redact, shorten

log = logging.getLogger("dptstream")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (redis and jobs sections).")]
RedisOpt = Annotated[str | None, typer.Option("--redis", help="Redis URL of the job queue (default: the config's redis sink, $REDIS_URL or redis://127.0.0.1:6379/0).")]


def _ids(ids: list[str], n: int = 8) -> str:
    return ", ".join(ids[:n]) + (f" and {len(ids) - n} more" if len(ids) > n else "")


def submit_cmd(
    files: Annotated[list[str], typer.Argument(help="Video files, globs ('videos/**/*.mp4', quoted) or file:// URIs; ID=FILE names a job.")],
    config: ConfigOpt = None,
    redis_url: RedisOpt = None,
    redis_prefix: PrefixOpt = None,
    id_from: Annotated[str, typer.Option("--id-from", help="Job (= stream) id from the file's 'stem' or its 'path' (relative, / -> _).")] = "stem",
    no_check: Annotated[bool, typer.Option("--no-check", help="Do not check that files exist here (only the workers see them).")] = False,
    debug: DebugOpt = False,
) -> None:
    """Queue video files as batch jobs for `dptstream worker` (a Redis stream read by a consumer group)."""
    from pipeline.cli.common import setup_logging
    from pipeline.jobs.keys import JobKeys
    from pipeline.jobs.submit import expand_inputs, submit

    setup_logging(debug, quiet=True)
    cfg = small_config(config, redis_url, redis_prefix)
    jobs = expand_inputs(files, id_from=id_from, check=not no_check)
    url = queue_url(cfg, redis_url)
    client = connect(url, cfg)
    keys = JobKeys(cfg.redis.prefix)
    rep = submit(client, keys, cfg.jobs.group, jobs)
    if rep.queued:
        print(f"queued {len(rep.queued)} job(s) on {keys.queue} at {redact(url)}: {_ids(rep.queued)}")
    if rep.requeued:
        print(f"queued again {len(rep.requeued)} failed job(s): {_ids(rep.requeued)}")
    by_state: dict[str, list[str]] = {}
    for jid, state in rep.skipped.items():
        by_state.setdefault(state, []).append(jid)
    for state, ids in sorted(by_state.items()):
        print(f"skipped {len(ids)} job(s) already {state}: {_ids(ids)}")


def worker_cmd(
    config: ConfigArg = None,
    sink: Annotated[list[str] | None, typer.Option("--sink", help="redis://[user:pass@]host:port/db (needed: progress for exactly-once resume lives there), plus dir:PATH or video:DIR. Repeatable. Default: $REDIS_URL or redis://127.0.0.1:6379/0.")] = None,
    model: ModelOpt = None,
    tasks: TasksOpt = None,
    engine: EngineOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    batch_size: BatchSizeOpt = None,
    mask_size: MaskSizeOpt = None,
    metrics_port: MetricsPortOpt = None,
    redis_prefix: PrefixOpt = None,
    queue: Annotated[str | None, typer.Option("--queue", help="Redis URL of the job queue (default: the first redis sink).")] = None,
    claim_idle: Annotated[float | None, typer.Option("--claim-idle", help="Seconds a job's worker may be silent before another worker takes the job over (default 60).")] = None,
    max_attempts: Annotated[int | None, typer.Option("--max-attempts", help="Attempts ending without progress (hand-backs do not count) before a job is marked failed (default 3).")] = None,
    max_jobs: Annotated[int | None, typer.Option("--max-jobs", help="Exit after finishing this many jobs.")] = None,
    until_empty: Annotated[bool, typer.Option("--until-empty", help="Exit when no job is queued or held by another worker (default: wait for jobs forever).")] = False,
    name: Annotated[str | None, typer.Option("--name", help="Consumer name in the group (default HOST-PID).")] = None,
    progress: ProgressOpt = None,
    max_side: MaxSideOpt = None,
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Process queued jobs: engines load once, then one file at a time; SIGTERM hands the current job back."""
    from pipeline.cli.common import build_overrides, set_max_side, setup_logging

    setup_logging(debug, quiet)
    o = build_overrides(None, sink, model, tasks, engine, device, batch_size, mask_size, metrics_port,
                        precision, redis_prefix)
    set_max_side(o, max_side)
    jobs: dict[str, Any] = {}
    if claim_idle is not None:
        jobs["claim_idle_s"] = claim_idle
    if max_attempts is not None:
        jobs["max_attempts"] = max_attempts
    if jobs:
        o["jobs"] = jobs
    if progress is not None:
        o["progress"] = progress
    cfg = load_config(config, o)
    if max_jobs is not None and max_jobs < 1:
        raise ConfigError("--max-jobs must be at least 1")
    raise typer.Exit(run_worker(cfg, queue, name, max_jobs, until_empty))


def run_worker(cfg: PipelineConfig, queue: str | None = None, name: str | None = None,
               max_jobs: int | None = None, until_empty: bool = False) -> int:
    from pipeline.cli.common import StopOnSignals
    from pipeline.jobs.worker import Worker, refuse_one_file_sinks
    from pipeline.runtime.app import start_runtime

    refuse_one_file_sinks(cfg)  # before the models load: fail fast
    if cfg.sources:
        log.warning("the config's %d source(s) are ignored: a worker takes its files from the job queue",
                    len(cfg.sources))
        cfg = cfg.model_copy(update={"sources": []})
    url = queue_url(cfg, queue)
    client = connect(url, cfg, timeout=cfg.jobs.poll_s + 10.0)
    holder: dict[str, Any] = {}

    def health() -> tuple[bool, bool, dict[str, Any]]:
        w = holder.get("worker")
        if w is None:
            return True, False, {"state": "starting"}
        return True, True, {"state": "running" if w.job else "idle", "job": w.job, "worker": w.name}

    rt = start_runtime(cfg, health=health)
    try:
        worker = Worker(cfg, rt, client, name=name, progress=cfg.progress, max_jobs=max_jobs,
                        until_empty=until_empty)
        holder["worker"] = worker
        for t, e in rt.engines.items():
            log.info("%s: %s (%s) input %s", t, e.spec.model_id, e.spec.backend, e.spec.preprocess.describe())
        log.info("sinks: %s; job queue at %s", ", ".join(s.name for s in rt.sinks), redact(url))
        if rt.port is not None:
            log.info("metrics on http://%s:%d/metrics", cfg.metrics.host, rt.port)
        with StopOnSignals(worker, "the current job's decoded frames go to the sinks, then it is handed back"):
            outcomes = worker.run()
        done = sum(1 for o in outcomes if o.state == "done")
        failed = sum(1 for o in outcomes if o.state == "failed")
        frames = sum(o.new for o in outcomes)
        log.info("worker %s: %d job(s) done, %d failed, %d frames published", worker.name, done, failed, frames)
        return 0
    finally:
        rt.close()
        client.close()


def _ago(t: float | None, now: float) -> str:
    if t is None:
        return ""
    d = max(0.0, now - t)
    return f"{d:.0f}s ago" if d < 120 else f"{d / 60:.0f}m ago" if d < 7200 else f"{d / 3600:.1f}h ago"


def _dur(s: float | None) -> str:
    if s is None:
        return ""
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h"


def status_cmd(
    jobs: Annotated[list[str] | None, typer.Argument(help="Job ids (default: every job).")] = None,
    config: ConfigOpt = None,
    redis_url: RedisOpt = None,
    redis_prefix: PrefixOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object: counts and every job.")] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", min=0, max=10**9, help="Most jobs listed (running and failed first); 0 = all.")] = 50,
    debug: DebugOpt = False,
) -> None:
    """Jobs queued / running / done / failed, with per-job progress (frames, fps, ETA) and failure reasons."""
    import redis

    from pipeline.cli.common import err, setup_logging
    from pipeline.frames import STREAM_ID_RULE, valid_stream_id
    from pipeline.jobs.keys import STATES, JobKeys
    from pipeline.jobs.status import active_workers, job_status
    from pipeline.redact import printable
    from pipeline.sinks import key_problem

    setup_logging(debug, quiet=True)
    cfg = small_config(config, redis_url, redis_prefix)
    for j in jobs or []:
        if not valid_stream_id(j):
            raise ConfigError(f"invalid job id {shorten(j)!r}: {STREAM_ID_RULE}")
    url = queue_url(cfg, redis_url)
    client = connect(url, cfg)
    keys = JobKeys(cfg.redis.prefix)
    problems: list[str] = []
    infos = job_status(client, keys, jobs or None, cfg.jobs.claim_idle_s, problems)
    # an idle worker checks in every poll_s, a busy one at every heartbeat (at most 2 s apart)
    try:
        workers: int | None = len(active_workers(client, keys, 15.0 + 3 * cfg.jobs.poll_s))
    except redis.ResponseError as e:
        problems.append(key_problem(client, e, {keys.workers: "zset"}, "counting the workers"))
        workers = None
    for line in problems:  # one line per unreadable key; the jobs that can be read are listed all the same
        err(line)
    counts = {s: sum(1 for i in infos if i.state == s) for s in STATES}
    if as_json:
        print(json.dumps({"queue": keys.queue, "group": cfg.jobs.group, "workers": workers, "counts": counts,
                          "jobs": [i.as_dict() for i in infos], "problems": problems}, indent=2))
        if problems:
            raise typer.Exit(1)
        return
    missing = [j for j in jobs or [] if j not in {i.id for i in infos}]
    print(f"{keys.queue} at {redact(url)}: {len(infos)} job(s): "
          + ", ".join(f"{counts[s]} {s}" for s in STATES)
          + f"; {'?' if workers is None else workers} worker(s) active")
    order = {"running": 0, "failed": 1, "queued": 2, "done": 3}
    shown = sorted(infos, key=lambda i: (order.get(i.state, 4), i.submitted or 0.0))
    if limit > 0 and len(shown) > limit:
        rest = len(shown) - limit
        shown = shown[:limit]
    else:
        rest = 0
    if shown:
        now = time.time()
        rows = [("JOB", "STATE", "FRAMES", "DONE", "FPS", "ETA", "WORKER", "DETAIL")]
        for i in shown:
            total = i.frames
            frames = f"{i.published}/{total}" if total else (str(i.published) if i.published else "-")
            pct = f"{min(100.0, 100.0 * i.published / total):.0f}%" if total else ""
            state = i.state + (" (stale)" if i.stale else "")
            if i.state == "failed":
                detail = i.error or ""
            elif i.state == "running":
                detail = f"attempt {i.attempts}, heartbeat {_ago(i.heartbeat, now)}"
            elif i.state == "done":
                took = (i.finished - i.started) if i.finished and i.started else None
                detail = f"took {_dur(took)}" + (f"; {i.note}" if i.note else "")
            else:
                detail = f"attempts {i.attempts}" if i.attempts else ""
                if i.error:
                    detail += f"{'; ' if detail else ''}last error: {i.error}"
            fps = f"{i.fps:.1f}" if i.fps else ""
            eta = _dur(i.eta_s) if i.eta_s is not None else ""
            worker = i.worker if i.state == "running" else ""
            rows.append((i.id, state, frames, pct, fps, eta, printable(worker or "", lines=False),
                         printable(detail, lines=False)))
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
        for r in rows:
            print("  ".join(v.ljust(w) for v, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
    if rest:
        print(f"... {rest} more job(s) (--limit 0 lists all)")
    if missing:
        print(f"unknown job(s): {', '.join(missing)}", file=sys.stderr)
    if missing or problems:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("submit")(submit_cmd)
    app.command("worker")(worker_cmd)
    app.command("status")(status_cmd)
