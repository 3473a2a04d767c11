"""``dptstream bench``: flags -> a :class:`~pipeline.benchmark.plan.Plan` -> :func:`pipeline.benchmark.run.run_bench`
-> one JSON file (the modes and ratios are described in :mod:`pipeline.benchmark.run`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from pipeline.benchmark.plan import CPU_BATCHES, GPU_BATCHES, VARIANTS
from pipeline.cli.common import DebugOpt, QuietOpt

log = logging.getLogger("dptstream")


def register(app: typer.Typer) -> None:
    @app.command()
    def bench(
        model: Annotated[list[str] | None, typer.Option("--model", "-m", help="TASK=PATH|ID. Default: the tiny sample checkpoints (or --random-large).")] = None,
        tasks: Annotated[str, typer.Option(help="segmentation,depth (default both).")] = "segmentation,depth",
        random_large: Annotated[bool, typer.Option("--random-large", help="Random weights of the real DPT-Large architecture (DPT-Large-ADE @480, DPT-Large @384), plus an engine-only row for a Depth-Anything-V2-Large-sized model (ViT-L/14 at 518).")] = False,
        families: Annotated[bool, typer.Option("--families", help="Engine-only rows for the tiny checkpoint of every depth family (DPT-Hybrid, BEiT, SwinV2, DINOv2, Depth Anything V1/V2, metric).")] = False,
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
        cache_dir: Annotated[str, typer.Option("--cache-dir", envvar="DPTSTREAM_CACHE_DIR", help="Engine cache (ONNX, TensorRT plans, OpenVINO models).")] = "~/.cache/dptstream",
        out: Annotated[Path | None, typer.Option("--out", "-o", help="JSON output (default bench/results/{cpu,gpu}-DATE.json).")] = None,
        debug: DebugOpt = False,
        quiet: QuietOpt = False,
    ) -> None:
        """Engine-only, end-to-end (decode -> Redis) and naive-transformers throughput in one run; JSON out."""
        import sys

        from pipeline.cli.common import build_overrides, setup_logging

        setup_logging(debug, quiet)
        from pipeline.benchmark.run import BenchRequest, bench
        from pipeline.redact import redact

        args = sys.argv[1:] if sys.argv[1:2] == ["bench"] else ["bench"]
        req = BenchRequest(
            command="dptstream " + " ".join(redact(a) for a in args), device=device,
            tasks=build_overrides(None, None, None, tasks, None, None, None, None, None)["tasks"],
            models=build_overrides(None, None, model, None, None, None, None, None, None).get("models", {})
            if model else {},
            variants=variants, threads=threads, modes=modes, e2e_variants=e2e_variants, streams=streams,
            redis=redis, batch_sizes=batch_sizes, e2e_batch=e2e_batch, seconds=seconds, min_calls=min_calls,
            warmup=warmup, naive_frames=naive_frames, soak_seconds=soak_seconds, cache_dir=cache_dir,
            memory_per_stream=memory_per_stream, repeat=repeat, clip_size=clip_size, work_dir=work_dir,
            random_large=random_large, clip=clip, clip_frames=clip_frames, out=out, families=families,
            variant_batches=variant_batches, naive_precisions=naive_precisions)
        path = bench(req)
        print(str(path))
