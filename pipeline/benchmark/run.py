"""``dptstream bench``: engine-only, end-to-end and naive-transformers throughput, measured in one run.

Three modes, each a list of entries in one JSON file (README.md, "Benchmark"):

- ``engine``: the engines alone, on device-resident preprocessed batches of real frames of the clip
  (per engine variant, per batch size; ``segmentation``, ``depth`` and, for the batch sizes measured
  end to end, both in sequence as the pipeline runs them);
- ``e2e``: the full :class:`pipeline.runtime.Pipeline`, decode -> Redis, with N concurrent streams of the clip,
  on the same (already loaded and warmed-up) engines; latency is each frame's decode -> publish time,
  read back from the published Redis entries;
- ``naive``: a sequential transformers loop on the same clip (decode -> ``DPTImageProcessor`` -> model ->
  ``post_process_semantic_segmentation`` (+ ``post_process_depth_estimation``)).

Ratios (e2e / engine at the same variant and batch size, e2e / naive) are computed from entries of the
same file. Model loading and warm-up (CUDA graph capture, first calls) are never inside a timed region.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.benchmark.e2e import E2EResult, check_redis, run_e2e
from pipeline.benchmark.engine import (
    Inputs,
    bench_engines,
    decode_frames,
    engine_config_for,
    engine_inputs,
    prepare_inputs,
    tensorrt_facts,
)
from pipeline.benchmark.naive import run_naive
from pipeline.benchmark.plan import (
    CPU_BATCHES,
    GPU_BATCHES,
    MAX_THREADS,
    Plan,
    Variant,
    int_list,
    parse_e2e_variants,
    parse_size,
    parse_variant_batches,
    parse_variants,
)
from pipeline.benchmark.results import default_out, e2e_entry, entry, machine_info, ratios, variant_label, versions
from pipeline.benchmark.timing import Timer, latency_ms, median, torch_threads
from pipeline.config import ConfigError

log = logging.getLogger("dptstream.bench")

Progress = Callable[[list[dict[str, Any]], list[dict[str, Any]], list[str]], None]


def release_gpu_memory() -> None:
    """Between variants: collect what the last one left (engines, graphs, inputs) and return the cached blocks,
    so the next variant captures its graphs in a device that holds nothing of the previous one."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def run_bench(plan: Plan, inp: Inputs, progress: Progress | None = None,
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Every measurement of ``plan``; ``progress`` gets the results so far after each variant (a run cut short
    by a time limit still leaves its completed measurements behind)."""
    import engines as eng

    results: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []
    notes: list[str] = []
    max_batch = max([b for v in plan.variants for b in plan.batches_for(v.name)] + plan.batches
                    + plan.e2e_batches)
    frames = list(decode_frames(inp.clip, min(max_batch, 16)))
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    net_side = 0
    for v in plan.variants:
        if v.backend == "tensorrt" and not eng.tensorrt_available():
            notes.append(f"variant {v.name}: skipped, TensorRT is not installed here")
            log.warning("variant %s: skipped (TensorRT is not installed)", v.name)
            continue
        # everything of one variant lives in _bench_variant's frame, so its engines (and on a GPU their memory)
        # are gone when it returns, before the next variant loads and captures graphs
        net_side = _bench_variant(plan, inp, v, frames, max_batch, run_id, results, pairs, notes) or net_side
        release_gpu_memory()
        if progress is not None:
            progress(results, pairs + ratios(results, with_engine=not pairs), notes)
    large_family = plan.random_large and plan.device == "cuda"  # CPU: the realistic models are the main rows
    if "engine" in plan.modes and (plan.families or large_family):
        from pipeline.benchmark.families import bench_family_rows, family_models

        fmodels = family_models(inp.clip.parent, plan.families, large_family)
        results += bench_family_rows(fmodels, frames, plan.variants, plan.device, plan.batches, plan.warmup,
                                     plan.min_calls, plan.min_seconds, plan.cache_dir, eng.tensorrt_available())
        release_gpu_memory()
        if progress is not None:
            progress(results, pairs + ratios(results, with_engine=not pairs), notes)
    if "naive" in plan.modes:
        _bench_naive(plan, inp, net_side, results)
    return results, pairs + ratios(results, with_engine=not pairs), notes


def _bench_variant(plan: Plan, inp: Inputs, v: Variant, frames: list[Any], max_batch: int, run_id: str,
                   results: list[dict[str, Any]], pairs: list[dict[str, Any]], notes: list[str]) -> int:
    """Engine-only, e2e and soak measurements of one variant; returns the network side. Its engines are
    closed and unreferenced when this returns."""
    import engines as eng

    combined = "+".join(plan.tasks)
    base = {"tasks": plan.tasks, "models": dict(inp.models),
            "engine": {"device": plan.device, "cache_dir": plan.cache_dir}}
    paired = "e2e" in plan.modes and v.name in plan.e2e_variants
    loaded: dict[str, Any] = {}
    with torch_threads(v.threads):
        try:
            for task in plan.tasks:  # loading, graph capture and first calls: never timed
                loaded[task] = eng.create_engine(engine_config_for(task, inp.models[task], v, plan.device,
                                                                   max_batch, plan.cache_dir))
            for task in loaded:
                # the network shape this clip is fed at (not the processor's size: some checkpoints keep the
                # source's aspect ratio)
                inp.input_shape[task] = tuple(loaded[task].spec.network_shape(inp.height, inp.width))
                loaded[task].warmup()
            seg = loaded.get("segmentation") or next(iter(loaded.values()))
            net_side = int(seg.spec.preprocess.height)
            backend = str(seg.spec.backend)
            del seg
            extra: dict[str, Any] = {"threads": v.threads} if v.threads else {}
            trt = tensorrt_facts(loaded)
            if trt:
                extra["tensorrt"] = trt
                for task, facts in trt.items():
                    att = (facts.get("attention") or {}).get("attention_fused")
                    if att is False and v.fp32_softmax:
                        notes.append(f"{v.name} {task}: IEngineInspector shows the attention Softmax as separate "
                                     "layers (not fused); the FP32 Casts around it can prevent TensorRT's "
                                     "attention fusion: compare variant tensorrt-fp16softmax (Softmax in FP16)")
            inputs = engine_inputs(loaded, frames, max_batch) if "engine" in plan.modes else {}

            def engine_timer(b: int, tasks: list[str]) -> Timer:
                return bench_engines(loaded, inputs, b, [tasks], plan.device, plan.warmup, plan.min_calls,
                                     plan.min_seconds)[0][1]

            if "engine" in plan.modes:
                for b in plan.batches_for(v.name):
                    sets = [[t] for t in plan.tasks]
                    if len(plan.tasks) > 1:
                        sets.append(plan.tasks)
                    for tasks in sets:
                        task = "+".join(tasks)
                        if paired and b in plan.e2e_batches and task == combined:
                            continue  # measured below, alternating with the end-to-end runs
                        timer = engine_timer(b, tasks)
                        results.append(entry("engine", task, inp, backend, b, timer.fps, latency_ms(timer.calls),
                                             timer.frames, **extra, cpu_ms_per_frame=timer.cpu_ms_per_frame))
                        log.info("engine %-19s %-24s batch %2d: %8.1f frames/s (p50 %.1f ms)", task,
                                 variant_label(backend, v), b, timer.fps, results[-1]["latency_ms"]["p50"])
            if paired:
                for b in plan.e2e_batches:
                    _bench_e2e(plan, inp, v, loaded, base, backend, b, extra, run_id, engine_timer, results, pairs)
                if plan.soak_seconds > 0:
                    trace: list[tuple[float, float]] = []
                    b = plan.e2e_batches[-1]
                    r = run_e2e(loaded, base, inp.clip, plan.streams, b, plan.redis_url, f"{run_id}-{v.label}-soak",
                                None, plan.soak_seconds, trace)
                    soak = e2e_entry([r], combined, inp, backend, b, plan.streams, extra)
                    soak.update(soak_seconds=plan.soak_seconds, rss_trace=trace)
                    results.append(soak)
                    log.info("soak   %-19s %-24s batch %2d: %.0f s, %.1f frames/s, RSS %.0f -> %.0f MB", combined,
                             variant_label(backend, v), b, r.seconds, r.fps, r.rss_mb["start"], r.rss_mb["end"])
            return net_side
        finally:
            for e in loaded.values():
                e.close()
            loaded.clear()


def _bench_e2e(plan: Plan, inp: Inputs, v: Variant, loaded: dict[str, Any], base: dict[str, Any], backend: str,
               b: int, extra: dict[str, Any], run_id: str, engine_timer: Callable[[int, list[str]], Timer],
               results: list[dict[str, Any]], pairs: list[dict[str, Any]]) -> None:
    """``repeat`` end-to-end runs at batch ``b``, alternating with engine-only runs of both tasks."""
    combined = "+".join(plan.tasks)
    eng_runs: list[Timer] = []
    e2e_runs: list[E2EResult] = []
    for i in range(plan.repeat):
        if "engine" in plan.modes:
            eng_runs.append(engine_timer(b, plan.tasks))
        e2e_runs.append(run_e2e(loaded, base, inp.clip, plan.streams, b, plan.redis_url,
                                f"{run_id}-{v.label}-b{b}-{i}", inp.warm_clip if i == 0 else None))
        msg = f"engine {eng_runs[-1].fps:.1f}, " if eng_runs else ""
        log.info("e2e    %-19s %-24s batch %2d: %sdecode->Redis %.1f frames/s (%d streams, run %d/%d)", combined,
                 variant_label(backend, v), b, msg, e2e_runs[-1].fps, plan.streams, i + 1, plan.repeat)
    if eng_runs:
        fps_list = [t.fps for t in eng_runs]
        results.append(entry("engine", combined, inp, backend, b, median(fps_list),
                             latency_ms([c for t in eng_runs for c in t.calls]), sum(t.frames for t in eng_runs),
                             **extra, fps_runs=[round(f, 2) for f in fps_list],
                             cpu_ms_per_frame=round(sum(t.cpu_seconds for t in eng_runs) * 1000
                                                    / max(1, sum(t.frames for t in eng_runs)), 2)))
    results.append(e2e_entry(e2e_runs, combined, inp, backend, b, plan.streams, extra))
    if eng_runs:
        vals = [r.fps / t.fps for r, t in zip(e2e_runs, eng_runs, strict=True) if t.fps > 0]
        pairs.append({"ratio": "e2e/engine", "task": combined, "backend": backend, "threads": v.threads, "batch": b,
                      "e2e_fps": results[-1]["fps"], "engine_fps": results[-2]["fps"],
                      "value": round(median(vals), 3), "runs": [round(x, 3) for x in vals],
                      # the least disturbed run of each (timeit's convention) on a busy machine
                      "best_value": round(max(r.fps for r in e2e_runs) / max(t.fps for t in eng_runs), 3),
                      "cpu_ms_per_frame": {"e2e": results[-1]["cpu_ms_per_frame"],
                                           "engine": results[-2]["cpu_ms_per_frame"]},
                      # CPU per frame outside the engine: e2e minus engine-only
                      "host_cpu_ms_per_frame": round(results[-1]["cpu_ms_per_frame"]
                                                     - results[-2]["cpu_ms_per_frame"], 2),
                      "how": "median of per-run ratios, engine-only and e2e alternating"})
    if plan.memory_streams and e2e_runs[-1].gpu_mem_mb is not None and plan.streams > 1:
        one = run_e2e(loaded, base, inp.clip, 1, b, plan.redis_url, f"{run_id}-{v.label}-b{b}-one", None)
        many = max(r.gpu_mem_mb or 0.0 for r in e2e_runs)
        if one.gpu_mem_mb is not None:
            results[-1]["gpu_mem_peak_one_stream_mb"] = one.gpu_mem_mb
            results[-1]["gpu_mem_per_extra_stream_mb"] = round((many - one.gpu_mem_mb) / (plan.streams - 1), 1)


def _bench_naive(plan: Plan, inp: Inputs, net_side: int, results: list[dict[str, Any]]) -> None:
    """The naive transformers loop per thread count (CPU) and precision (FP32, and FP16 on CUDA)."""
    import torch

    combined = "+".join(plan.tasks)
    limit = plan.naive_frames or inp.frames
    dev = "cuda" if plan.device.startswith("cuda") else "cpu"
    precisions = plan.naive_precisions if dev == "cuda" else ["fp32"]
    for precision in precisions:
        for threads in plan.naive_threads:
            with torch_threads(threads):
                timers = [run_naive(inp.models, inp.clip, dev, limit,
                                    net_side or max((hw[0] for hw in inp.input_shape.values()), default=384), precision)
                          for _ in range(plan.repeat)]
                n_threads = torch.get_num_threads()
            release_gpu_memory()
            fps_list = [t.fps for t in timers]
            results.append(entry("naive", combined, inp, f"transformers-{dev}-{precision}", 1, median(fps_list),
                                 latency_ms([c for t in timers for c in t.calls]), sum(t.frames for t in timers),
                                 streams=1, source=[inp.width, inp.height], threads=n_threads,
                                 fps_runs=[round(f, 2) for f in fps_list],
                                 cpu_ms_per_frame=round(sum(t.cpu_seconds for t in timers) * 1000
                                                        / max(1, sum(t.frames for t in timers)), 2)))
            log.info("naive  %-19s transformers-%s-%s t%d: %8.1f frames/s", combined, dev, precision, n_threads,
                     median(fps_list))


@dataclass(frozen=True)
class BenchRequest:
    """What ``dptstream bench`` was asked for, as parsed flags (see ``dptstream bench --help``)."""

    command: str
    device: str
    tasks: list[str]
    models: dict[str, str]
    variants: str | None
    threads: str | None
    modes: str
    e2e_variants: str | None
    streams: int | None
    redis: str | None
    batch_sizes: str | None
    e2e_batch: str
    seconds: float
    min_calls: int
    warmup: int
    naive_frames: int
    soak_seconds: float
    cache_dir: str
    memory_per_stream: bool
    repeat: int | None
    clip_size: str | None
    work_dir: Path
    random_large: bool
    clip: Path | None
    clip_frames: int
    out: Path | None
    variant_batches: list[str] | None = None  # VARIANT=SIZES: engine-only batch sizes of one variant
    naive_precisions: str | None = None  # CUDA: fp32,fp16 by default
    families: bool = False


def _given(value: str | None, default: str) -> str:
    """A flag's text, or ``default`` when the flag was not given (an empty value is the user's, and is checked)."""
    return default if value is None else value


def bench(r: BenchRequest) -> Path:
    """Plan, prepare the inputs, run every measurement and write the JSON (rewritten after each step, so an
    interrupted run leaves its partial results); returns the JSON's path."""
    import torch

    from engines import tensorrt_available

    if r.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {r.device!r}: use auto, cpu or cuda")
    if r.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no CUDA GPU here (use --device cpu)")
    dev = "cuda" if r.device == "cuda" or (r.device == "auto" and torch.cuda.is_available()) else "cpu"
    vtext = _given(r.variants, "fp32" if dev == "cpu" else
                   "fp32,fp16,fp16-graphs" + (",tensorrt,tensorrt-fp16softmax" if tensorrt_available() else ""))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    thread_list = int_list(r.threads, "--threads", MAX_THREADS) if r.threads is not None else ([1, cores] if cores > 1 else [1])
    vlist = parse_variants(vtext, dev, thread_list if dev == "cpu" else None)
    mode_list = [m.strip() for m in r.modes.split(",") if m.strip()]
    if not mode_list or any(m not in ("engine", "e2e", "naive") for m in mode_list):
        raise ConfigError(f"--modes {r.modes!r}: use engine, e2e and/or naive")
    names = [v.name for v in vlist]
    e2e_vs = parse_e2e_variants(r.e2e_variants, names, tensorrt_available())
    if r.streams is not None and r.streams < 1:
        raise ConfigError("--streams must be >= 1")
    naive_list = [p.strip() for p in _given(r.naive_precisions, "fp32,fp16" if dev == "cuda" else "fp32").split(",")
                  if p.strip()]
    if not naive_list or any(p not in ("fp32", "fp16", "bf16") for p in naive_list) or \
            (dev == "cpu" and naive_list != ["fp32"]):
        raise ConfigError(f"--naive-precisions {r.naive_precisions!r}: use fp32, fp16 and/or bf16 (CUDA); "
                          "on CPU only fp32")
    redis_url = r.redis or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    plan = Plan(
        tasks=r.tasks, device=dev, variants=vlist,
        batches=int_list(_given(r.batch_sizes, GPU_BATCHES if dev == "cuda" else CPU_BATCHES), "--batch-sizes"),
        e2e_batches=int_list(r.e2e_batch, "--e2e-batch"), e2e_variants=e2e_vs,
        streams=r.streams or (8 if dev == "cuda" else 2), modes=mode_list, redis_url=redis_url,
        min_seconds=r.seconds, min_calls=max(1, r.min_calls), warmup=max(0, r.warmup), naive_frames=r.naive_frames,
        soak_seconds=r.soak_seconds, cache_dir=r.cache_dir, memory_streams=r.memory_per_stream,
        repeat=max(1, r.repeat or (1 if dev == "cuda" else 3)),
        naive_threads=list(thread_list) if dev == "cpu" else [None],
        families=r.families, random_large=r.random_large,
        naive_precisions=naive_list, variant_batches=parse_variant_batches(r.variant_batches, names),
    )
    size = parse_size(_given(r.clip_size, "1920x1080" if dev == "cuda" else "1280x720"))
    if "e2e" in mode_list:  # a dead Redis fails now, not after minutes of engine-only measurements
        check_redis(redis_url)
    inp = prepare_inputs(Path(os.path.expanduser(str(r.work_dir))), r.tasks, r.models, r.random_large, r.clip, size,
                         r.clip_frames, device=dev)
    log.info("bench on %s: %s; clip %s (%dx%d, %d frames)", dev, ", ".join(v.label for v in vlist), inp.clip,
             inp.width, inp.height, inp.frames)
    path = r.out or default_out(dev)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(results: list[dict[str, Any]], rats: list[dict[str, Any]], notes: list[str],
              partial: bool = True) -> None:
        doc = {"command": r.command, "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "machine": machine_info(), "versions": versions(), "results": results, "ratios": rats,
               "notes": notes + (["partial: the run did not finish"] if partial else [])}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(path)

    results, rats, notes = run_bench(plan, inp, write)
    if "e2e" in mode_list:
        notes.append("e2e: decode -> Redis with file sources read as fast as the pipeline takes them (block "
                     "policy, queues full), so latency_ms is decode -> publish including queueing; fps counts "
                     "published frames over the run, model loading and warm-up excluded")
    if "engine" in mode_list:
        notes.append("engine: engine.infer alone on device-resident preprocessed batches of the clip's frames; "
                     "latency_ms is per batch call")
    write(results, rats, notes, partial=False)
    for x in rats:
        log.info("%s %s batch %d%s: %.3f", x["ratio"], x["backend"], x["batch"],
                 f" t{x['threads']}" if x.get("threads") else "", x["value"])
    return path
