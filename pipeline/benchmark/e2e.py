"""End-to-end throughput: the whole pipeline on N concurrent copies of a clip into Redis."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.benchmark.timing import cpu_by_thread, cpu_ms_per_frame_by_stage, rss_mb, thread_cpu
from pipeline.config import ConfigError

# -- end to end ---------------------------------------------------------------------------------------------
log = logging.getLogger("dptstream")


@dataclass
class E2EResult:
    published: int
    seconds: float
    latencies_s: list[float]
    stage_ms: dict[str, float]
    batch_mean: float
    cpu_busy: float  # process CPU seconds per wall second (cores busy)
    cpu_seconds: float
    thread_cpu_s: dict[str, float]  # CPU seconds per thread kind during the run
    rss_mb: dict[str, float]
    gpu_mem_mb: float | None

    @property
    def fps(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms_by_stage(self) -> dict[str, float]:
        return cpu_ms_per_frame_by_stage(self.thread_cpu_s, self.published)


def stage_profile(metrics: Any) -> tuple[dict[str, float], float]:
    """Mean wall milliseconds per item in each stage, from ``dptstream_stage_seconds``; mean batch size."""
    reg = metrics.registry
    prof: dict[str, float] = {}
    for stage in ("preprocess", "infer", "postprocess", "publish"):
        s = reg.get_sample_value("dptstream_stage_seconds_sum", {"stage": stage})
        n = reg.get_sample_value("dptstream_stage_seconds_count", {"stage": stage})
        if s is not None and n:
            prof[f"{stage}_ms"] = round(s / n * 1000, 3)
            prof[f"{stage}_busy_s"] = round(s, 3)
    bs = reg.get_sample_value("dptstream_batch_size_sum")
    bn = reg.get_sample_value("dptstream_batch_size_count")
    return prof, (bs / bn if bs is not None and bn else 0.0)


def run_e2e(engines: dict[str, Any], base: dict[str, Any], clip: Path, streams: int, batch: int, redis_url: str,
            prefix: str, warm_clip: Path | None, loop_seconds: float = 0.0,
            rss_trace: list[tuple[float, float]] | None = None) -> E2EResult:
    """One run of the full pipeline over ``streams`` copies of ``clip``; engines already loaded and warm."""
    import torch

    from pipeline.configfile import load_config
    from pipeline.metrics import Metrics
    from pipeline.runtime import Pipeline
    from pipeline.runtime.app import describe_sinks, open_sinks
    from pipeline.runtime.plan import resolve_zones

    if warm_clip is not None:  # first-run costs of every stage (threads, codecs, Redis script) stay out
        run_e2e(engines, base, warm_clip, min(streams, 2), batch, redis_url, prefix + "-warm", None)
    loop = loop_seconds > 0
    sources: list[dict[str, Any]] = [{"id": f"s{i}", "uri": str(clip), "loop": loop} for i in range(streams)]
    over = {**base, "sources": sources, "sinks": [redis_url], "resume": False, "progress": False,
            "metrics": {"port": None},
            # a soak keeps only the latest entries per stream (latencies are read back from them)
            "redis": {"prefix": prefix, "events": True, **({"maxlen": 500} if loop else {})},
            "engine": {**base.get("engine", {}), "batch_size": batch}}
    cfg = load_config(None, over)
    metrics = Metrics()
    stop = threading.Event()
    sinks = open_sinks(cfg, metrics, stop)
    cuda = any(str(e.spec.device).startswith("cuda") for e in engines.values())
    try:
        describe_sinks(sinks, engines, resolve_zones(cfg, engines))
        pipe = Pipeline(cfg, engines, sinks, metrics)
        pipe.build()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        rss0 = rss_mb()
        rss_max = rss0
        before = thread_cpu()
        last = dict(before)
        c0 = time.process_time()
        t0 = time.monotonic()
        pipe.start()
        next_sample = next_cpu = 0.0
        kinds: dict[int, str] = {}  # native thread id -> kind, read from /proc once per thread
        while pipe.running:
            now = time.monotonic() - t0
            # read while the stage threads are alive; every 0.25 s (this loop's own CPU counts in the run's
            # CPU per frame: reading /proc for every thread ten times a second cost ~1 ms per frame)
            if now >= next_cpu:
                last.update(thread_cpu(kinds))
                next_cpu = now + 0.25
            if now >= next_sample:
                r = rss_mb()
                rss_max = max(rss_max, r)
                if rss_trace is not None:
                    rss_trace.append((round(now, 1), r))
                next_sample = now + 1.0
            if loop and now >= loop_seconds and not pipe.stopping.is_set():
                pipe.request_stop()
            pipe.stages[-1].join(0.1)
        report = pipe.wait()
        wall = time.monotonic() - t0
        cpu = time.process_time() - c0
        if report.fatal:
            raise ConfigError(f"end-to-end run failed: {report.fatal}")
        gpu_mem = round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None
        lat = _read_latencies(sinks[0], [s["id"] for s in sources])
        prof, bmean = stage_profile(metrics)
        return E2EResult(report.published, report.seconds, lat, prof, bmean, round(cpu / max(wall, 1e-9), 2), cpu,
                         cpu_by_thread(before, last),
                         {"start": rss0, "end": rss_mb(), "max": rss_max}, gpu_mem)
    finally:
        _drop_keys(sinks[0], prefix)
        for s in sinks:
            s.close()
        metrics.close()


def _read_latencies(sink: Any, ids: list[str]) -> list[float]:
    client = sink._client
    out: list[float] = []
    for sid in ids:
        for _id, f in client.xrange(sink.keys.frames(sid)):
            out.append(float(f[b"latency_ms"]) / 1000.0)
    return out


def _drop_keys(sink: Any, prefix: str) -> None:
    client = getattr(sink, "_client", None)
    if client is None:
        return
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    except Exception as e:  # the numbers are measured; a leftover key is not worth failing for
        log.warning("could not delete the benchmark's Redis keys %s:* (%s)", prefix, e)


def check_redis(url: str) -> None:
    from pipeline.redact import redact
    from pipeline.sinks import error_reason, redis_client

    try:
        redis_client(url, timeout=2.0).ping()
    except Exception as e:
        raise ConfigError(f"cannot reach Redis at {redact(url)} ({error_reason(e)}); pass --redis URL, or "
                          "--modes engine,naive to skip the end-to-end runs") from e
