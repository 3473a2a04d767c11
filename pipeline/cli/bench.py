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

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.benchmark.e2e import check_redis
from pipeline.benchmark.engine import prepare_inputs
from pipeline.benchmark.plan import (
    CPU_BATCHES,
    GPU_BATCHES,
    VARIANTS,
    Plan,
    int_list,
    parse_size,
    parse_variant_batches,
    parse_variants,
)
from pipeline.benchmark.results import default_out, machine_info, versions
from pipeline.benchmark.run import run_bench
from pipeline.cli.common import DebugOpt, QuietOpt
from pipeline.config import ConfigError

log = logging.getLogger("dptstream")


def register(app: typer.Typer) -> None:
    @app.command()
    def bench(
        model: Annotated[list[str] | None, typer.Option("--model", "-m", help="TASK=PATH|ID. Default: the tiny sample checkpoints (or --random-large).")] = None,
        tasks: Annotated[str, typer.Option(help="segmentation,depth (default both).")] = "segmentation,depth",
        random_large: Annotated[bool, typer.Option("--random-large", help="Random weights of the real DPT-Large architecture (DPT-Large-ADE @480, DPT-Large @384).")] = False,
        device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
        variants: Annotated[str | None, typer.Option(help=f"Engine variants, comma-separated: {', '.join(VARIANTS)}. Default: fp32,fp16,fp16-graphs (+tensorrt,tensorrt-fp16softmax when installed) on CUDA; fp32 on CPU.")] = None,
        threads: Annotated[str | None, typer.Option(help="CPU: torch intra-op thread counts to measure, comma-separated (each one a variant). Default: 1 and the core count.")] = None,
        batch_sizes: Annotated[str | None, typer.Option("--batch-sizes", help=f"Engine-only batch sizes. Default {GPU_BATCHES} on CUDA, {CPU_BATCHES} on CPU.")] = None,
        variant_batches: Annotated[list[str] | None, typer.Option("--variant-batches", help="VARIANT=SIZES: engine-only batch sizes for one variant instead of --batch-sizes (repeatable), e.g. fp32=1,8.")] = None,
        naive_precisions: Annotated[str | None, typer.Option("--naive-precisions", help="Precisions of the naive loop on CUDA (default fp32,fp16; CPU: fp32).")] = None,
        e2e_batch: Annotated[str, typer.Option("--e2e-batch", help="Batch size(s) of the end-to-end runs.")] = "8",
        e2e_variants: Annotated[str | None, typer.Option("--e2e-variants", help="Variants also run end to end (default: the fastest kind measured: tensorrt, else fp16-graphs, else fp32).")] = None,
        streams: Annotated[int | None, typer.Option(help="Concurrent streams of the clip end to end (default 8 on CUDA, 2 on CPU).")] = None,
        clip: Annotated[Path | None, typer.Option(help="Video file to use (default: a generated real-content clip).")] = None,
        clip_size: Annotated[str | None, typer.Option("--clip-size", help="WxH of the generated clip (default 1920x1080 on CUDA, 1280x720 on CPU).")] = None,
        clip_frames: Annotated[int, typer.Option("--clip-frames", help="Frames in the generated clip.")] = 96,
        redis: Annotated[str | None, typer.Option("--redis", help="Redis URL for the end-to-end runs (default $REDIS_URL or redis://127.0.0.1:6379/0).")] = None,
        modes: Annotated[str, typer.Option(help="What to measure: engine,e2e,naive.")] = "engine,e2e,naive",
        seconds: Annotated[float, typer.Option(help="Minimum timed seconds per engine-only measurement.")] = 3.0,
        min_calls: Annotated[int, typer.Option("--min-calls", help="Minimum timed calls per engine-only measurement.")] = 5,
        warmup: Annotated[int, typer.Option(help="Untimed calls before each engine-only measurement.")] = 2,
        repeat: Annotated[int | None, typer.Option(help="Runs of each end-to-end (alternating with engine-only at the same batch) and naive measurement; medians reported (default 3 on CPU, 1 on CUDA).")] = None,
        naive_frames: Annotated[int, typer.Option("--naive-frames", help="Frames of the naive loop (0 = the whole clip).")] = 0,
        soak_seconds: Annotated[float, typer.Option("--soak-seconds", help="Also run looping streams this long, sampling RSS every second (0 = off).")] = 0.0,
        memory_per_stream: Annotated[bool, typer.Option("--memory-per-stream", help="CUDA: also run one stream to report GPU memory per extra stream.")] = False,
        work_dir: Annotated[Path, typer.Option("--work-dir", help="Generated clips and checkpoints (reused).")] = Path("~/.cache/dptstream/bench"),
        cache_dir: Annotated[str, typer.Option("--cache-dir", help="Engine cache (ONNX, TensorRT plans).")] = "~/.cache/dptstream",
        out: Annotated[Path | None, typer.Option("--out", "-o", help="JSON output (default bench/results/{cpu,gpu}-DATE.json).")] = None,
        debug: DebugOpt = False,
        quiet: QuietOpt = False,
    ) -> None:
        """Engine-only, end-to-end (decode -> Redis) and naive-transformers throughput in one run; JSON out."""
        import sys

        from pipeline.cli.common import build_overrides, setup_logging

        setup_logging(debug, quiet)
        import torch

        from pipeline.config import redact

        args = sys.argv[1:] if sys.argv[1:2] == ["bench"] else ["bench"]
        command = "dptstream " + " ".join(redact(a) for a in args)
        if device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device {device!r}: use auto, cpu or cuda")
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: torch sees no CUDA GPU here (use --device cpu)")
        dev = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
        task_list = build_overrides(None, None, None, tasks, None, None, None, None, None)["tasks"]
        models = build_overrides(None, None, model, None, None, None, None, None, None).get("models", {}) \
            if model else {}
        from engines import tensorrt_available

        vtext = variants or ("fp32" if dev == "cpu" else
                             "fp32,fp16,fp16-graphs" + (",tensorrt,tensorrt-fp16softmax" if tensorrt_available() else ""))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        thread_list = int_list(threads, "--threads") if threads else ([1, cores] if cores > 1 else [1])
        vlist = parse_variants(vtext, dev, thread_list if dev == "cpu" else None)
        mode_list = [m.strip() for m in modes.split(",") if m.strip()]
        if not mode_list or any(m not in ("engine", "e2e", "naive") for m in mode_list):
            raise ConfigError(f"--modes {modes!r}: use engine, e2e and/or naive")
        names = [v.name for v in vlist]
        e2e_vs: list[str] = [v.strip() for v in e2e_variants.split(",")] if e2e_variants else \
            [next(n for n in ("tensorrt", "fp16-graphs", "bf16-graphs", "fp16", "fp32", "bf16") if n in names)]
        if "tensorrt" in e2e_vs and not tensorrt_available():
            e2e_vs = [v for v in e2e_vs if v != "tensorrt"] or ["fp16-graphs" if "fp16-graphs" in names else names[0]]
        if streams is not None and streams < 1:
            raise ConfigError("--streams must be >= 1")
        naive_list = [p.strip() for p in (naive_precisions or ("fp32,fp16" if dev == "cuda" else "fp32")).split(",")
                      if p.strip()]
        if not naive_list or any(p not in ("fp32", "fp16", "bf16") for p in naive_list) or \
                (dev == "cpu" and naive_list != ["fp32"]):
            raise ConfigError(f"--naive-precisions {naive_precisions!r}: use fp32, fp16 and/or bf16 (CUDA); "
                              "on CPU only fp32")
        redis_url = redis or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
        plan = Plan(
            tasks=task_list, device=dev, variants=vlist,
            batches=int_list(batch_sizes or (GPU_BATCHES if dev == "cuda" else CPU_BATCHES), "--batch-sizes"),
            e2e_batches=int_list(e2e_batch, "--e2e-batch"), e2e_variants=e2e_vs,
            streams=streams or (8 if dev == "cuda" else 2), modes=mode_list, redis_url=redis_url,
            min_seconds=seconds, min_calls=max(1, min_calls), warmup=max(0, warmup), naive_frames=naive_frames,
            soak_seconds=soak_seconds, cache_dir=cache_dir, memory_streams=memory_per_stream,
            repeat=max(1, repeat or (1 if dev == "cuda" else 3)),
            naive_threads=list(thread_list) if dev == "cpu" else [None],
            naive_precisions=naive_list,
            variant_batches=parse_variant_batches(variant_batches, names),
        )
        size = parse_size(clip_size or ("1920x1080" if dev == "cuda" else "1280x720"))
        if "e2e" in mode_list:  # a dead Redis fails now, not after minutes of engine-only measurements
            check_redis(redis_url)
        inp = prepare_inputs(Path(os.path.expanduser(str(work_dir))), task_list, models, random_large, clip, size,
                             clip_frames)
        log.info("bench on %s: %s; clip %s (%dx%d, %d frames)", dev, ", ".join(v.label for v in vlist), inp.clip,
                 inp.width, inp.height, inp.frames)
        path = out or default_out(dev)
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(results: list[dict[str, Any]], rats: list[dict[str, Any]], notes: list[str],
                  partial: bool = True) -> None:
            doc = {"command": command, "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
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
        for r in rats:
            log.info("%s %s batch %d%s: %.3f", r["ratio"], r["backend"], r["batch"],
                     f" t{r['threads']}" if r.get("threads") else "", r["value"])
        print(str(path))
