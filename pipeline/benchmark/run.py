"""``dptstream bench``: engine-only, end-to-end and naive-transformers throughput, measured in one run.

Three modes, each a list of entries in one JSON file (DESIGN.md, "Benchmark results"):

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
import logging
import uuid
from collections.abc import Callable
from typing import Any

from pipeline.benchmark.e2e import E2EResult, run_e2e
from pipeline.benchmark.engine import (
    Inputs,
    bench_engines,
    decode_frames,
    engine_config_for,
    engine_inputs,
    tensorrt_facts,
)
from pipeline.benchmark.naive import run_naive
from pipeline.benchmark.plan import Plan, Variant
from pipeline.benchmark.results import e2e_entry, entry, ratios, variant_label
from pipeline.benchmark.timing import Timer, latency_ms, median, torch_threads

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
        # everything of one variant lives in _bench_variant's frame: gone when it returns (issue 12, item 10)
        net_side = _bench_variant(plan, inp, v, frames, max_batch, run_id, results, pairs, notes) or net_side
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
                inp.input_size[task] = loaded[task].spec.preprocess.height
                warm = getattr(loaded[task], "warmup", None)
                if warm is not None:
                    warm()
                del warm
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
                      # CPU per frame outside the engine: e2e minus engine-only (issue 12, item 13)
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
                                    net_side or max(inp.input_size.values(), default=384), precision)
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
