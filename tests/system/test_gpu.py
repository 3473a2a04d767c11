"""The GPU path: FP16 vs FP32 agreement at full size, CUDA-graph padding, the CUDA-stream pipeline against the
CPU path, no synchronising calls while work is queued. GPU tests skip without CUDA (they run in
``bench/gpu_check.sh`` on a lent GPU); each has a CPU twin where one makes sense, run everywhere.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engines import EngineConfig, Preprocessor, create_engine
from pipeline.frames import EndOfStream, FrameId, Inferred, Result, Shutdown
from pipeline.metrics import Metrics
from pipeline.queues import NamedQueue
from pipeline.stages import PostprocessStage
from pipeline.stages.gpu import StageStream

CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (runs in bench/gpu_check.sh)")


def _tensorrt() -> bool:
    from engines import tensorrt_available

    return tensorrt_available()


tensorrt_gpu = pytest.mark.skipif(not (CUDA and _tensorrt()), reason="needs a CUDA GPU and TensorRT")


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.cpu() == b.cpu()).float().mean())


# -- CPU twins and pure parts (run everywhere) --------------------------------------------------------------
def test_graph_batch_sizes_and_padding() -> None:
    from engines.torch_engine import graph_batch_sizes, padded_size

    assert graph_batch_sizes(8) == [1, 2, 4, 8]
    assert graph_batch_sizes(6) == [1, 2, 4, 6]
    assert graph_batch_sizes(1) == [1]
    sizes = graph_batch_sizes(16)
    assert [padded_size(n, sizes) for n in (1, 2, 3, 5, 8, 9, 16)] == [1, 2, 4, 8, 8, 16, 16]
    with pytest.raises(ValueError):
        padded_size(17, sizes)


def test_stage_stream_is_a_no_op_on_cpu() -> None:
    st = StageStream("cpu")
    assert not st.active and st.record() is None
    st.wait(None)
    st.keep(torch.zeros(2))
    with st.use():
        pass


class _FakeEvent:
    """Stands in for a CUDA event: done after ``polls`` queries (or when waited for)."""

    def __init__(self, polls: int) -> None:
        self.polls = polls
        self.waited = False

    def query(self) -> bool:
        self.polls -= 1
        return self.polls < 0

    def synchronize(self) -> None:
        self.waited = True


class _FakeStream(StageStream):
    """An 'active' stream on CPU tensors: exercises the queued (GPU) code path of the postprocess stage."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.events: list[_FakeEvent] = []

    @property
    def active(self) -> bool:
        return True

    def use(self) -> Any:
        return nullcontext()

    def record(self, blocking: bool = False, timing: bool = False) -> Any:
        ev = _FakeEvent(polls=len(self.events) % 3)
        self.events.append(ev)
        return ev

    def mark(self) -> Any:
        return None  # no GPU timing on fake events


def _inferred(n: int, seed: int = 0) -> list[Inferred]:
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, 64, 64, 150, generator=g) * 2.5).permute(0, 3, 1, 2)  # channels-last, as DPT's head
    depth = torch.rand(n, 64, 64, generator=g) * 3
    return [Inferred(FrameId("s", i, i / 25, time.time(), 320, 180), {"logits": logits[i], "depth": depth[i]})
            for i in range(n)]


def _same(a: Result, b: Result) -> None:
    assert a.id == b.id
    assert a.mask is not None and b.mask is not None and np.array_equal(a.mask, b.mask)
    assert a.classes == b.classes and a.depth == b.depth


def test_queued_postprocess_gives_the_immediate_results_in_order() -> None:
    """The GPU path's queue (launch now, finish later, flush at end of stream) changes nothing in the results."""
    items = _inferred(7)
    q: NamedQueue[Any] = NamedQueue("in", 100)
    ref_stage = PostprocessStage(q, q, Metrics(), threading.Event(), "default", 64, 150, 4, "relative_inverse")
    ref = [r for it in items for r in ref_stage.process(it)]
    assert len(ref) == 7

    inq: NamedQueue[Any] = NamedQueue("in", 100)
    outq: NamedQueue[Any] = NamedQueue("out", 100)
    st = PostprocessStage(inq, outq, Metrics(), threading.Event(), "default", 64, 150, 4, "relative_inverse",
                          inflight=2)
    fake = _FakeStream()
    st._stream = fake
    st.start()
    for it in items[:5]:
        inq.put(it)
    inq.put(EndOfStream("s", 5))  # flushes what is queued before the marker goes on
    for it in items[5:]:
        inq.put(it)
    inq.put(Shutdown())
    assert st.join(10) and st.error is None
    outs = [outq.get(0.1) for _ in range(len(outq))]
    assert [type(o).__name__ for o in outs] == ["Result"] * 5 + ["EndOfStream"] + ["Result"] * 2 + ["Shutdown"]
    for a, b in zip([o for o in outs if isinstance(o, Result)], ref, strict=True):
        _same(a, b)
    assert all(ev.waited for ev in fake.events)  # every result was read after its own event only


class _RecordingStream(StageStream):
    """An 'active' stream that records, for every event asked of it, whether the stream was entered then."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.depth = 0
        self.records: list[dict[str, bool]] = []

    @property
    def active(self) -> bool:
        return True

    @contextmanager
    def use(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def record(self, blocking: bool = False, timing: bool = False) -> Any:
        self.records.append({"inside": self.depth > 0, "blocking": blocking, "timing": timing})
        return _FakeEvent(polls=0)


def test_launch_enters_its_own_stream_and_the_host_waits_on_a_blocking_event() -> None:
    """``_launch`` called directly (as the no-sync GPU test does) still queues its work on the postprocess
    stream, and the event the host waits on in ``_finish`` is a blocking-sync one, so the wait sleeps instead
    of spinning a core."""
    q: NamedQueue[Any] = NamedQueue("in", 10)
    post = PostprocessStage(q, q, Metrics(), threading.Event(), "default", 64, 150, 4, "relative_inverse")
    rec = _RecordingStream()
    post._stream = rec
    job = post._launch(_inferred(1)[0])
    assert rec.depth == 0 and rec.records, "no event recorded"
    assert all(r["inside"] for r in rec.records), rec.records  # every event (and the work) on the stage stream
    assert rec.records[-1]["blocking"], "the event _finish waits on must be a blocking-sync event"
    assert rec.records[0]["timing"] and rec.records[-1]["timing"]  # GPU time of the stage
    result = post._finish(job)
    assert result.mask is not None and job.event.waited


def test_gpu_stage_time_is_read_from_events_not_the_host_call() -> None:
    """On an active stream ``stage_seconds`` gets the GPU time between the stage's timing events:
    the host time of a call that only queues kernels says nothing about the GPU."""

    class _TimedEvent(_FakeEvent):
        def __init__(self, t: float) -> None:
            super().__init__(polls=0)
            self.t = t

        def elapsed_time(self, end: _TimedEvent) -> float:
            return (end.t - self.t) * 1000.0  # milliseconds, as torch.cuda.Event

    class _ClockStream(_RecordingStream):
        def __init__(self) -> None:
            super().__init__()
            self.now = 0.0

        def record(self, blocking: bool = False, timing: bool = False) -> Any:
            super().record(blocking, timing)
            self.now += 0.25  # the 'GPU' spends 0.25 s between two events
            return _TimedEvent(self.now)

    metrics = Metrics()
    q: NamedQueue[Any] = NamedQueue("in", 10)
    post = PostprocessStage(q, q, metrics, threading.Event(), "default", 64, 150, 4, "relative_inverse")
    post._stream = _ClockStream()
    assert post.timed_on_gpu
    for it in _inferred(3):
        list(post.process(it))
    list(post.flush())
    reg = metrics.registry
    n = reg.get_sample_value("dptstream_stage_seconds_count", {"stage": "postprocess"})
    total = reg.get_sample_value("dptstream_stage_seconds_sum", {"stage": "postprocess"})
    assert n == 3 and total == pytest.approx(0.75)


def _reference_depth_summary(depth: torch.Tensor, mask: torch.Tensor, grid: int) -> dict[str, Any]:
    """The summary's definition, written plainly (torch.quantile per cell, lower median per class)."""
    h, w = depth.shape
    flat = depth.reshape(-1)
    q = torch.quantile(flat, torch.tensor([0.05, 0.5, 0.95]))
    cells = []
    for i in range(grid):
        for j in range(grid):
            cell = depth[i * h // grid:(i + 1) * h // grid, j * w // grid:(j + 1) * w // grid].reshape(-1)
            cells.append(float(torch.quantile(cell, 0.9)))
    per_class = {str(int(c)): float(flat[mask.reshape(-1) == c].median()) for c in torch.unique(mask)}
    return {"min": float(flat.min()), "max": float(flat.max()), "mean": float(flat.mean()),
            "p05": float(q[0]), "p50": float(q[1]), "p95": float(q[2]), "cells": cells, "per_class": per_class}


@pytest.mark.parametrize("hw", [(108, 192), (270, 480), (37, 53)])
def test_depth_summary_matches_its_definition(hw: tuple[int, int]) -> None:
    from pipeline.stages.depth import depth_summary

    g = torch.Generator().manual_seed(1)
    depth = torch.rand(*hw, generator=g) * 4
    mask = (torch.rand(*hw, generator=g) * 12).to(torch.uint8)
    got = depth_summary(depth, mask, 4, "relative_inverse", 256)
    ref = _reference_depth_summary(depth, mask, 4)
    for k in ("min", "max", "mean", "p05", "p50", "p95"):
        assert got[k] == pytest.approx(ref[k], abs=2e-6)
    assert [v for row in got["grid"] for v in row] == pytest.approx(ref["cells"], abs=2e-6)
    assert got["per_class"].keys() == ref["per_class"].keys()
    assert list(got["per_class"].values()) == pytest.approx(list(ref["per_class"].values()), abs=2e-6)


# -- GPU ---------------------------------------------------------------------------------------------------
def _large_checkpoints() -> dict[str, Path]:
    """Random weights of the real DPT-Large architectures (built once; the GPU script shares them with bench)."""
    from pipeline.sample import make_checkpoint

    root = Path(os.environ.get("DPTSTREAM_LARGE_DIR", "/tmp/dptstream-large"))
    out = {}
    for task in ("segmentation", "depth"):
        path = root / f"dpt-large-{task}-random"
        if not (path / "config.json").exists():
            make_checkpoint(path, task, large=True)
        out[task] = path
    return out


def _frames(n_per_photo: int = 4, w: int = 1920, h: int = 1080) -> list[torch.Tensor]:
    from pipeline.sample import make_frames

    return [torch.from_numpy(f.copy()) for seed in (0, 1) for f in make_frames(n_per_photo, w, h, seed=seed)]


@contextmanager
def _true_fp32() -> Iterator[None]:
    """FP32 references in real FP32 (no TF32 tensor-core rounding)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@gpu
@pytest.mark.gpu
def test_fp16_masks_agree_with_fp32_at_full_size() -> None:
    """DPT-Large-ADE @480 (random weights, real architecture): FP16 + CUDA graphs vs FP32 on real-content
    1080p frames, masks at the published size: >= 99 % of pixels on every frame. Depth @384: close."""
    from engines import EngineConfig, Preprocessor, create_engine
    from pipeline.stages.depth import resize_depth
    from pipeline.stages.masks import mask_size, segment

    ckpt = _large_checkpoints()
    frames = _frames()
    report = {}
    for task in ("segmentation", "depth"):
        engines = {p: create_engine(EngineConfig(task=task, model=str(ckpt[task]), backend="torch",  # type: ignore[arg-type]
                                                 device="cuda", precision=p, max_batch=8, cuda_graphs=p == "fp16"))
                   for p in ("fp32", "fp16")}
        spec = engines["fp32"].spec.preprocess
        x = Preprocessor(spec, "cuda", torch.float32)(frames)
        with _true_fp32():
            ref = engines["fp32"].infer(x)
        out = engines["fp16"].infer(x.half())
        name = "logits" if task == "segmentation" else "depth"
        w, h = mask_size("default", 1920, 1080, spec.height)
        if task == "segmentation":
            masks_ref = [segment(ref[name][i], (h, w)) for i in range(len(frames))]
            agree = [agreement(segment(out[name][i], (h, w)), masks_ref[i]) for i in range(len(frames))]
            classes = [len(torch.unique(m)) for m in masks_ref]
            report[task] = {"agreement": [round(a, 5) for a in agree], "classes": classes}
            print("fp16 vs fp32 mask agreement per frame:", report[task])
            assert min(classes) >= 5, "masks too uniform for the agreement to mean anything"
            assert min(agree) >= 0.99
        else:
            d_ref = torch.stack([resize_depth(ref[name][i], (h, w)) for i in range(len(frames))])
            d_out = torch.stack([resize_depth(out[name][i], (h, w)) for i in range(len(frames))])
            span = float(d_ref.max() - d_ref.min())
            err = (d_out - d_ref).abs()
            report[task] = {"span": span, "max_err_of_span": float(err.max()) / span,
                            "mean_err_of_span": float(err.mean()) / span}
            print("fp16 vs fp32 depth:", report[task])
            assert span > 0 and float(err.mean()) <= 0.01 * span
        for e in engines.values():
            e.close()
        torch.cuda.empty_cache()


@gpu
@pytest.mark.gpu
def test_cuda_graph_padding_matches_eager() -> None:
    """A partial batch is padded to the next captured size; its outputs equal an eager run of the same frames."""
    from engines import EngineConfig, Preprocessor, create_engine
    from pipeline.sample import make_checkpoint

    ckpt = make_checkpoint(Path(os.environ.get("DPTSTREAM_LARGE_DIR", "/tmp/dptstream-large")) / "tiny-seg",
                           "segmentation")
    cfg = dict(task="segmentation", model=str(ckpt), backend="torch", device="cuda", precision="fp16", max_batch=8)
    graphs = create_engine(EngineConfig(**cfg, cuda_graphs=True))  # type: ignore[arg-type]
    eager = create_engine(EngineConfig(**cfg, cuda_graphs=False))  # type: ignore[arg-type]
    assert graphs.spec.backend.endswith("-graphs") and getattr(graphs, "graph_sizes", None) == [1, 2, 4, 8]
    x = Preprocessor(graphs.spec.preprocess, "cuda", torch.float16)(_frames(4, 640, 360))
    for n in (3, 5, 8, 1):
        a = graphs.infer(x[:n])["logits"]
        b = eager.infer(x[:n])["logits"]
        assert a.shape == b.shape and a.shape[0] == n
        assert agreement(a.argmax(1), b.argmax(1)) >= 0.999
        assert torch.allclose(a, b, atol=2e-2, rtol=0)
    # a replay does not overwrite an earlier result (outputs are copies of the static buffer)
    first = graphs.infer(x[:2])["logits"]
    keep = first.clone()
    graphs.infer(x[2:4])
    assert torch.equal(first, keep)


def _run_pipeline(clip: Path, seg: Path, depth: Path, out_dir: Path, device: str, precision: str,
                  streams: int = 3, batch: int = 4) -> dict[tuple[str, int], dict[str, Any]]:
    """Run the real pipeline (dir sink) and read back every frame's mask and depth summary."""
    import json

    from PIL import Image

    from pipeline.configfile import load_config
    from pipeline.runtime import Pipeline
    from pipeline.runtime.app import create_engines
    from pipeline.sinks import create_sink

    cfg = load_config(None, {
        "sources": [{"id": f"s{i}", "uri": str(clip)} for i in range(streams)],
        "sinks": [f"dir:{out_dir}"], "models": {"segmentation": str(seg), "depth": str(depth)},
        "engine": {"backend": "torch", "device": device, "precision": precision, "batch_size": batch},
        "metrics": {"port": None}, "progress": False,
    })
    metrics = Metrics()
    sink = create_sink(cfg.sinks[0], cfg, metrics, None, None, threading.Event())
    sink.open()
    engines = create_engines(cfg)
    try:
        report = Pipeline(cfg, engines, [sink], metrics).run()
        assert report.fatal is None and report.published == streams * 20, report
    finally:
        sink.close()
        for e in engines.values():
            e.close()
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for line_file in out_dir.glob("*.jsonl"):
        for line in line_file.read_text().splitlines():
            rec = json.loads(line)
            rec["mask"] = np.asarray(Image.open(out_dir / rec["mask"]))
            found[(rec["stream"], rec["frame"])] = rec
    return found


@gpu
@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_stream_pipeline_gives_the_cpu_masks(assets: dict[str, Path], tmp_path: Path, precision: str) -> None:
    """3 streams through pinned memory, three CUDA streams and events (batches of 4: partial batches padded
    to captured graph sizes) give the CPU pipeline's masks and depth summaries."""
    seg, depth, clip = assets["segmentation"], assets["depth"], assets["clip360"]
    cpu = _run_pipeline(clip, seg, depth, tmp_path / "cpu", "cpu", "fp32")
    cuda = _run_pipeline(clip, seg, depth, tmp_path / "cuda", "cuda", precision)
    assert cpu.keys() == cuda.keys() and len(cpu) == 60
    agree = [float((cpu[k]["mask"] == cuda[k]["mask"]).mean()) for k in sorted(cpu)]
    print(f"{precision}: CUDA vs CPU mask agreement min {min(agree):.4f} mean {np.mean(agree):.4f}")
    # the CPU path resamples uint8 (as PIL), CUDA resamples floats: inputs differ by one grey level here and there
    assert min(agree) >= 0.98 and float(np.mean(agree)) >= 0.99
    for k in cpu:
        a, b = cpu[k]["depth"], cuda[k]["depth"]
        span = max(a["max"] - a["min"], 1e-6)
        assert abs(a["p50"] - b["p50"]) <= 0.02 * span and abs(a["mean"] - b["mean"]) <= 0.02 * span


@gpu
@pytest.mark.gpu
def test_stages_queue_gpu_work_without_synchronising(assets: dict[str, Path]) -> None:
    """Preprocess, infer and postprocess launches make no synchronising CUDA call (sync debug mode = error);
    results come back through their own events, equal to the synchronous computation."""
    from pipeline.configfile import load_config
    from pipeline.frames import Frame
    from pipeline.queues import FanIn
    from pipeline.runtime.app import create_engines
    from pipeline.stages import InferStage, PreprocessStage
    from pipeline.stages.depth import depth_summary, resize_depth
    from pipeline.stages.masks import class_fractions, mask_size, segment
    from tests.support.oracle import decode_rgb

    cfg = load_config(None, {"models": {"segmentation": str(assets["segmentation"]), "depth": str(assets["depth"])},
                             "engine": {"backend": "torch", "device": "cuda", "precision": "fp16", "batch_size": 4}})
    engines = create_engines(cfg)
    q: NamedQueue[Any] = NamedQueue("q", 100)
    abort = threading.Event()
    pre = PreprocessStage(FanIn(), q, Metrics(), abort, engines, None)
    inf = InferStage(q, q, Metrics(), abort, engines, 4, 0)
    post = PostprocessStage(q, q, Metrics(), abort, "default", 192, 150, 4, "relative_inverse", inflight=8)
    images = decode_rgb(assets["clip360"])[:4]
    frames = [Frame(FrameId("s", i, 0.0, time.time(), 640, 360), im) for i, im in enumerate(images)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        prepared = [p for f in frames for p in pre.process(f)]
        from pipeline.frames import Batch

        inferred = list(inf.process(Batch(tuple(p.id for p in prepared), tuple(prepared))))
        launched = [post._launch(it) for it in inferred]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(p.event is not None for p in prepared) and all(i.event is not None for i in inferred)
    results = [post._finish(j) for j in launched]
    torch.cuda.synchronize()
    for it, r in zip(inferred, results, strict=True):
        w, h = mask_size("default", 640, 360, 192)
        m = segment(it.outputs["logits"], (h, w))
        assert r.mask is not None and np.array_equal(r.mask, m.cpu().numpy())
        assert r.classes == class_fractions(m.cpu(), 150)
        d = resize_depth(it.outputs["depth"], (h, w))
        assert r.depth == depth_summary(d, m, 4, "relative_inverse", 256)  # the same maths, synchronously


@gpu
@pytest.mark.gpu
def test_fp16_outputs_stay_fp16_and_each_frame_holds_only_its_slice(assets: dict[str, Path]) -> None:
    """No full-resolution FP32 logits: the engine returns its own dtype, the infer stage
    gives each frame its own storage (not a view of the whole batch), and the half logits' masks equal
    those of the same logits upcast first on >= 99 % of pixels."""
    from pipeline.frames import Batch, FrameId, Prepared
    from pipeline.stages import InferStage
    from pipeline.stages.masks import segment

    cfg = EngineConfig(task="segmentation", model=str(assets["segmentation"]), backend="torch", device="cuda",
                       precision="fp16", max_batch=4)
    engine = create_engine(cfg)
    x = Preprocessor(engine.spec.preprocess, "cuda", torch.float16)(_frames(2, 640, 360))
    assert engine.infer(x)["logits"].dtype == torch.float16
    q: NamedQueue[Any] = NamedQueue("q", 10)
    inf = InferStage(q, q, Metrics(), threading.Event(), {"segmentation": engine}, 4, 0)
    prepared = tuple(Prepared(FrameId("s", i, 0.0, time.time(), 640, 360), {"segmentation": x[i : i + 1]},
                              None, ("segmentation",)) for i in range(4))
    outs = list(inf.process(Batch(tuple(p.id for p in prepared), prepared)))
    logits = [o.outputs["logits"] for o in outs]
    torch.cuda.synchronize()
    assert all(t.dtype == torch.float16 for t in logits)
    ptrs = {t.untyped_storage().data_ptr() for t in logits}
    assert len(ptrs) == 4 and all(t.untyped_storage().nbytes() == t.numel() * 2 for t in logits)
    for t in logits:
        assert agreement(segment(t, (203, 360)), segment(t.float(), (203, 360))) >= 0.99
    engine.close()


@gpu
@pytest.mark.gpu
def test_postprocess_on_cuda_matches_cpu() -> None:
    from pipeline.stages.depth import depth_summary, resize_depth
    from pipeline.stages.masks import segment

    for it in _inferred(3, seed=2):
        lg, dp = it.outputs["logits"], it.outputs["depth"]
        m_cpu, m_gpu = segment(lg, (36, 64)), segment(lg.cuda(), (36, 64))
        assert agreement(m_cpu, m_gpu) >= 0.999
        s_cpu = depth_summary(resize_depth(dp, (36, 64)), m_cpu, 4, "relative_inverse", 256)
        s_gpu = depth_summary(resize_depth(dp.cuda(), (36, 64)), m_cpu.cuda(), 4, "relative_inverse", 256)
        assert s_cpu["grid"] == pytest.approx(s_gpu["grid"], abs=1e-4)
        assert s_cpu["p50"] == pytest.approx(s_gpu["p50"], abs=1e-4)
        assert s_cpu["per_class"].keys() == s_gpu["per_class"].keys()


@tensorrt_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("fp32_softmax", [True, False], ids=["fp32-softmax", "fp16-softmax"])
def test_tensorrt_plan_agrees_with_torch_fp32(assets: dict[str, Path], tmp_path: Path, fp32_softmax: bool) -> None:
    """A strongly typed FP16 TensorRT plan of the tiny checkpoints, built for batch 1..2:
    masks at the published size agree with torch FP32 on >= 99 % of pixels of every real-content frame, at
    batch 1 and 2; depth within 1 % of its range. Reports what IEngineInspector says about attention fusion."""
    from tests.support.oracle import decode_rgb

    frames = [torch.from_numpy(f.copy()) for f in decode_rgb(assets["clip360"])[:4]]
    for task in ("segmentation", "depth"):
        model = str(assets[task])
        plan = create_engine(EngineConfig(task=task, model=model, backend="tensorrt", device="cuda",  # type: ignore[arg-type]
                                          precision="fp16", max_batch=2, cache_dir=str(tmp_path),
                                          fp32_softmax=fp32_softmax))
        ref = create_engine(EngineConfig(task=task, model=model, backend="torch", device="cuda",  # type: ignore[arg-type]
                                         precision="fp32", max_batch=2, cuda_graphs=False))
        layers = getattr(plan, "layers", {})
        print(task, plan.spec.backend, "attention:", layers, "device memory:", getattr(plan, "device_memory_bytes", None),
              "plan bytes:", getattr(plan, "plan_bytes", None))
        assert layers.get("layers", 0) > 0 and getattr(plan, "device_memory_bytes", -1) >= 0
        spec = plan.spec.preprocess
        x = Preprocessor(spec, "cuda", torch.float32)(frames)
        from pipeline.stages.depth import resize_depth
        from pipeline.stages.masks import mask_size, segment

        w, h = mask_size("default", 640, 360, spec.height)
        for b in (1, 2):
            for i in range(0, len(frames), b):
                out = plan.infer(x[i : i + b])
                with _true_fp32():
                    want = ref.infer(x[i : i + b])
                name = "logits" if task == "segmentation" else "depth"
                assert out[name].shape == want[name].shape
                for k in range(b):
                    if task == "segmentation":
                        m_ref = segment(want[name][k], (h, w))
                        assert len(torch.unique(m_ref)) >= 5, "masks too uniform to mean anything"
                        assert agreement(segment(out[name][k], (h, w)), m_ref) >= 0.99
                    else:
                        d_ref, d = resize_depth(want[name][k], (h, w)), resize_depth(out[name][k], (h, w))
                        span = float(d_ref.max() - d_ref.min())
                        assert span > 0 and float((d - d_ref).abs().mean()) <= 0.01 * span
        plan.close()
        ref.close()
