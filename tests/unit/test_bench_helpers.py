"""Pure helpers of the benchmark: percentiles and the e2e/engine, e2e/naive ratios."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_percentile_and_ratios() -> None:
    from pipeline.benchmark.results import ratios
    from pipeline.benchmark.timing import percentile

    assert percentile([], 50) == 0.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    base = {"task": "segmentation+depth", "backend": "torch-cpu-fp32", "batch": 8, "threads": 1}
    results = [
        {**base, "mode": "engine", "fps": 20.0},
        {**base, "mode": "e2e", "fps": 18.0},
        {**base, "mode": "naive", "fps": 6.0, "batch": 1, "threads": 2},
        {**base, "mode": "naive", "fps": 9.0, "batch": 1, "threads": 1},
        {**base, "mode": "engine", "fps": 40.0, "threads": 2},  # another engine configuration: not compared
    ]
    out = {r["ratio"]: r for r in ratios(results)}
    assert out["e2e/engine"]["value"] == 0.9
    assert out["e2e/naive"]["value"] == 2.0 and out["e2e/naive"]["naive_threads"] == 1  # the fastest naive


def test_cpu_per_frame_by_stage() -> None:
    from pipeline.benchmark.timing import cpu_ms_per_frame_by_stage

    got = cpu_ms_per_frame_by_stage({"source": 0.1, "codec": 0.3, "preprocess": 0.2, "infer": 4.0,
                                     "postprocess": 0.8, "publish": 0.1, "MainThread": 0.05, "other": 1.0}, 100)
    assert got == {"bench": 0.5, "decode": 4.0, "infer": 40.0, "other": 10.0, "postprocess": 8.0,
                   "preprocess": 2.0, "publish": 1.0, "host": 15.0}
    assert cpu_ms_per_frame_by_stage({"infer": 1.0}, 0) == {}


def test_ffmpeg_codec_threads_are_told_apart(tmp_path: Path) -> None:
    """FFmpeg's frame threads count as decode work, not as 'other' (where torch's workers go)."""
    import av

    from pipeline.benchmark.timing import thread_cpu
    from pipeline.sample import make_clip

    clip = make_clip(tmp_path / "c.mp4", frames=6, width=320, height=180)
    with av.open(str(clip)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = 2
        frames = c.decode(stream)
        next(frames)
        kinds = {name for name, _ in thread_cpu().values()}
        for _ in frames:
            pass
    assert "codec" in kinds and "MainThread" in kinds


def test_e2e_against_the_naive_loop_of_each_precision() -> None:
    """On CUDA the naive loop runs in FP32 and FP16: e2e/naive is reported against both."""
    from pipeline.benchmark.results import ratios

    base = {"task": "segmentation+depth", "batch": 8}
    results = [
        {**base, "mode": "e2e", "backend": "torch-cuda-fp16-graphs", "fps": 600.0},
        {**base, "mode": "naive", "backend": "transformers-cuda-fp32", "fps": 30.0, "batch": 1},
        {**base, "mode": "naive", "backend": "transformers-cuda-fp16", "fps": 60.0, "batch": 1},
        {**base, "mode": "naive", "backend": "transformers-cuda-fp16", "fps": 50.0, "batch": 1},
    ]
    got = {r["naive_backend"]: r["value"] for r in ratios(results) if r["ratio"] == "e2e/naive"}
    assert got == {"transformers-cuda-fp32": 20.0, "transformers-cuda-fp16": 10.0}


def test_variant_batches() -> None:
    from pipeline.benchmark.plan import Plan, parse_variant_batches, parse_variants
    from pipeline.config import ConfigError

    vb = parse_variant_batches(["fp32=1,8", "fp16=8"], ["fp16-graphs", "fp16", "fp32"])
    assert vb == {"fp32": [1, 8], "fp16": [8]}
    plan = Plan(tasks=["segmentation"], device="cuda", variants=parse_variants("fp16-graphs,fp32", "cuda", None),
                batches=[1, 2, 4, 8, 16], e2e_batches=[8], e2e_variants=["fp16-graphs"], streams=8, modes=["engine"],
                redis_url="", min_seconds=0.5, min_calls=3, warmup=2, naive_frames=16, soak_seconds=30.0,
                cache_dir="", memory_streams=False, variant_batches=vb)
    assert plan.batches_for("fp32") == [1, 8] and plan.batches_for("fp16-graphs") == [1, 2, 4, 8, 16]
    for bad in (["bf16=8"], ["fp32"], ["fp32=0"]):
        with pytest.raises(ConfigError):
            parse_variant_batches(bad, ["fp16-graphs", "fp16", "fp32"])
    trt = parse_variants("tensorrt,tensorrt-fp16softmax", "cuda", None)
    assert [(v.backend, v.fp32_softmax) for v in trt] == [("tensorrt", True), ("tensorrt", False)]


def test_openvino_variants_run_on_cpu_beside_torch_fp32() -> None:
    from pipeline.benchmark.plan import parse_variants
    from pipeline.config import ConfigError

    vs = parse_variants("fp32,ov-fp32,ov-bf16", "cpu", [2])
    assert [(v.name, v.backend, v.precision, v.threads) for v in vs] == [
        ("fp32", "torch", "fp32", 2), ("ov-fp32", "openvino", "fp32", 2), ("ov-bf16", "openvino", "bf16", 2)]
    with pytest.raises(ConfigError, match="OpenVINO variants run on CPU"):
        parse_variants("ov-bf16", "cuda", None)
