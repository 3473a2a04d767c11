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
import platform
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.config import ConfigError

log = logging.getLogger("dptstream.bench")

COMBINED = "segmentation+depth"
VARIANTS = ("fp32", "fp16", "fp16-graphs", "bf16", "bf16-graphs", "tensorrt")
GPU_BATCHES = "1,2,4,8,16"
CPU_BATCHES = "1,4,8"

DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")]


# -- small helpers -------------------------------------------------------------------------------------------
def int_list(text: str, what: str) -> list[int]:
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not a comma-separated list of integers") from None
    if not out or any(v < 1 for v in out):
        raise ConfigError(f"{what}: {text!r} needs one or more integers >= 1")
    return list(dict.fromkeys(out))


def parse_size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) < 16 or int(h) < 16:
        raise ConfigError(f"--clip-size {text!r}: use WxH, e.g. 1280x720")
    return int(w), int(h)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100) of ``values``; 0.0 for none."""
    if not values:
        return 0.0
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def latency_ms(values_s: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values_s, 50) * 1000, 3), "p99": round(percentile(values_s, 99) * 1000, 3)}


def rss_mb() -> float:
    """Resident set size of this process (Linux ``/proc``; 0.0 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return 0.0


@dataclass(frozen=True)
class Variant:
    """One engine configuration to measure."""

    name: str  # "fp32", "fp16-graphs", "tensorrt", ...
    backend: str  # "torch" | "tensorrt"
    precision: str  # "fp32" | "fp16" | "bf16"
    cuda_graphs: bool
    threads: int | None = None  # torch intra-op threads (CPU)

    @property
    def label(self) -> str:
        return self.name + (f"-t{self.threads}" if self.threads else "")


def parse_variants(text: str, device: str, threads: list[int] | None) -> list[Variant]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names:
        raise ConfigError(f"--variants: unknown variant {bad[0] if bad else text!r} (use {', '.join(VARIANTS)})")
    out: list[Variant] = []
    for n in names:
        if device == "cpu" and n != "fp32":
            raise ConfigError(f"--variants {n}: on CPU only fp32 is measured (FP16/BF16 and TensorRT need CUDA)")
        if n == "tensorrt":
            out.append(Variant(n, "tensorrt", "fp16", False))
            continue
        prec, _, graphs = n.partition("-")
        for t in threads or [None]:  # type: ignore[list-item]
            out.append(Variant(n, "torch", prec, graphs == "graphs", t))
    return out


class Timer:
    """Per-call latencies and total wall time of a timed loop; CUDA work is waited for at each call's end."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.calls: list[float] = []
        self.frames = 0
        self.seconds = 0.0
        self.cpu_seconds = 0.0  # this process's CPU time over the timed region (all threads)

    def run(self, fn: Callable[[], int], warmup: int, min_calls: int, min_seconds: float) -> Timer:
        import torch

        for _ in range(warmup):
            fn()
        self._sync(torch)
        c_start = time.process_time()
        t_start = time.perf_counter()
        while len(self.calls) < min_calls or time.perf_counter() - t_start < min_seconds:
            t0 = time.perf_counter()
            self.frames += fn()
            self._sync(torch)
            self.calls.append(time.perf_counter() - t0)
        self.seconds = time.perf_counter() - t_start
        self.cpu_seconds = time.process_time() - c_start
        return self

    @property
    def cpu_ms_per_frame(self) -> float:
        return round(self.cpu_seconds / self.frames * 1000, 2) if self.frames else 0.0

    def _sync(self, torch: Any) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


# -- inputs: clip and checkpoints ---------------------------------------------------------------------------
@dataclass
class Inputs:
    clip: Path
    warm_clip: Path
    width: int
    height: int
    frames: int
    models: dict[str, str]
    model_names: dict[str, str]  # what the JSON says about each model
    input_size: dict[str, int] = field(default_factory=dict)


def prepare_inputs(work: Path, tasks: list[str], models: dict[str, str], random_large: bool, clip: Path | None,
                   clip_size: tuple[int, int], clip_frames: int) -> Inputs:
    from pipeline.sample import make_checkpoint, make_clip, make_sample
    from pipeline.sources import probe_file

    work.mkdir(parents=True, exist_ok=True)
    names: dict[str, str] = {}
    chosen: dict[str, str] = {}
    real = {"segmentation": "Intel/dpt-large-ade", "depth": "Intel/dpt-large"}
    for task in tasks:
        if task in models:
            chosen[task] = models[task]
            names[task] = models[task]
        elif random_large:
            path = work / f"dpt-large-{task}-random"
            if not (path / "config.json").exists():
                log.info("building random-weight %s (the real DPT-Large architecture) in %s", real[task], path)
                make_checkpoint(path, task, large=True)
            chosen[task] = str(path)
            names[task] = f"{real[task]} (random weights)"
        else:
            paths = make_sample(work / "tiny", frames=8)
            chosen[task] = str(paths[task])
            names[task] = f"dpt-tiny-{'ade' if task == 'segmentation' else 'depth'} (random weights)"
    w, h = clip_size
    if clip is None:
        clip = work / f"clip-{w}x{h}-{clip_frames}.mp4"
        if not clip.exists():
            log.info("encoding a %dx%d real-content clip of %d frames: %s", w, h, clip_frames, clip)
            make_clip(clip, frames=clip_frames, width=w, height=h)
    elif not clip.is_file():
        raise ConfigError(f"--clip {clip}: file not found")
    from pipeline.config import parse_source

    facts = probe_file(parse_source(str(clip)))
    w, h = int(facts["width"]), int(facts["height"])
    warm = work / f"warm-{w}x{h}.mp4"
    if not warm.exists():
        make_clip(warm, frames=12, width=w, height=h, seed=3)
    n = int(facts["frames"] or 0) or sum(1 for _ in _decode(clip))
    return Inputs(clip, warm, w, h, n, chosen, names)


def _decode(path: Path, limit: int | None = None) -> Iterator[Any]:
    import av

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        for i, f in enumerate(c.decode(stream)):
            if limit is not None and i >= limit:
                return
            yield f.to_ndarray(format="rgb24")


# -- engine-only --------------------------------------------------------------------------------------------
def engine_config_for(task: str, model: str, v: Variant, device: str, max_batch: int, cache_dir: str) -> Any:
    from engines import EngineConfig

    return EngineConfig(task=task, model=model, backend=v.backend, device=device,  # type: ignore[arg-type]
                        precision=v.precision, max_batch=max_batch,  # type: ignore[arg-type]
                        cuda_graphs=v.cuda_graphs, cache_dir=cache_dir, threads=v.threads)


def engine_inputs(engines: dict[str, Any], frames: list[Any], max_batch: int) -> dict[str, list[Any]]:
    """Per task: device-resident network inputs of real frames, as batches of 1 .. max_batch (cycled)."""
    import torch

    from engines import Preprocessor

    out: dict[str, list[Any]] = {}
    for task, e in engines.items():
        pre = Preprocessor(e.spec.preprocess, e.spec.device, e.spec.dtype)
        x = pre([torch.from_numpy(f) for f in frames])
        reps = -(-max_batch // x.shape[0])
        out[task] = [x.repeat(reps, 1, 1, 1)[:max_batch].contiguous()]
    return out


def bench_engines(engines: dict[str, Any], inputs: dict[str, list[Any]], batch: int, task_sets: list[list[str]],
                  device: str, warmup: int, min_calls: int, min_seconds: float) -> list[tuple[str, Timer]]:
    out = []
    for tasks in task_sets:
        xs = {t: inputs[t][0][:batch] for t in tasks}

        def call(tasks: list[str] = tasks, xs: dict[str, Any] = xs) -> int:
            for t in tasks:
                engines[t].infer(xs[t])
            return batch

        timer = Timer(device).run(call, warmup, min_calls, min_seconds)
        out.append((COMBINED if len(tasks) > 1 else tasks[0], timer))
    return out


# -- end to end ---------------------------------------------------------------------------------------------
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


def thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds used so far by each thread of this process: ``{tid: (name, seconds)}`` (Linux ``/proc``).

    Threads that Python did not start (torch's OpenMP workers, FFmpeg's codec threads) are named ``other``.
    """
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid), "other")
        name = "source" if name.startswith("source-") else name.removeprefix("stage-")
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def cpu_by_thread(before: dict[int, tuple[str, float]], last: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per thread kind between two sets of readings (threads that ended keep their last one)."""
    out: dict[str, float] = {}
    for tid, (name, secs) in last.items():
        out[name] = out.get(name, 0.0) + secs - before.get(tid, (name, 0.0))[1]
    return {k: round(v, 2) for k, v in sorted(out.items())}


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

    from pipeline.app import describe_sinks, open_sinks
    from pipeline.config import load_config
    from pipeline.metrics import Metrics
    from pipeline.runtime import Pipeline

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
        describe_sinks(sinks, engines)
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
        next_sample = 0.0
        while pipe.running:
            now = time.monotonic() - t0
            last.update(thread_cpu())  # read while the stage threads are alive
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


# -- naive transformers loop --------------------------------------------------------------------------------
def run_naive(models: dict[str, str], clip: Path, device: str, limit: int, net_side: int) -> Timer:
    """decode -> DPTImageProcessor -> model -> post_process_* per frame, sequentially (masks to host)."""
    import torch
    from transformers import AutoImageProcessor, DPTForDepthEstimation, DPTForSemanticSegmentation
    from transformers.utils import logging as hf_logging

    from pipeline.postprocess import mask_size

    dev = torch.device(device)
    procs: dict[str, Any] = {}
    nets: dict[str, Any] = {}
    hf_logging.disable_progress_bar()
    try:
        for task, path in models.items():
            procs[task] = AutoImageProcessor.from_pretrained(path)
            cls: Any = DPTForSemanticSegmentation if task == "segmentation" else DPTForDepthEstimation
            nets[task] = cls.from_pretrained(path).to(dev).eval()
    finally:
        hf_logging.enable_progress_bar()
    # one processor call when both checkpoints want the same preprocessing (a fair, not a strawman, loop)
    shared = len(procs) > 1 and len({json.dumps(p.to_dict(), sort_keys=True, default=str)
                                     for p in procs.values()}) == 1
    frames = _decode(clip, limit)
    timer = Timer(device)

    def one() -> int:
        try:
            image = next(frames)
        except StopIteration:
            return 0
        h, w = image.shape[:2]
        mw, mh = mask_size("default", w, h, net_side)
        cache: dict[str, Any] = {}
        with torch.inference_mode():
            for task, net in nets.items():
                key = "shared" if shared else task
                if key not in cache:
                    cache[key] = procs[task](images=image, return_tensors="pt").to(dev)
                out = net(**cache[key])
                if task == "segmentation":
                    procs[task].post_process_semantic_segmentation(out, target_sizes=[(mh, mw)])[0].cpu()
                else:
                    procs[task].post_process_depth_estimation(
                        out, target_sizes=[(mh, mw)])[0]["predicted_depth"].cpu()
        return 1

    # warm-up on the first frame (not counted), then every following frame once
    one()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    c_start = time.process_time()
    t_start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        n = one()
        if not n:
            break
        timer.frames += n
        timer.calls.append(time.perf_counter() - t0)
    timer.seconds = time.perf_counter() - t_start
    timer.cpu_seconds = time.process_time() - c_start
    return timer


# -- machine and versions -----------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = driver = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20)
            driver = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            driver = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "gpu": gpu, "driver": driver,
            "cuda": torch.version.cuda if torch.cuda.is_available() else None}


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    from pipeline.app import version as dpt_version

    out: dict[str, str | None] = {"dptstream": dpt_version()}
    for name in ("torch", "transformers", "tensorrt", "av"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    if out["tensorrt"] is not None:
        from engines import tensorrt_available

        if not tensorrt_available():  # type stubs only, no runtime
            out["tensorrt"] = None
    return out


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Intra-op threads for what runs inside (the engine's and, in e2e, every stage's torch ops)."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# -- the benchmark ------------------------------------------------------------------------------------------
@dataclass
class Plan:
    tasks: list[str]
    device: str
    variants: list[Variant]
    batches: list[int]
    e2e_batches: list[int]
    e2e_variants: list[str]
    streams: int
    modes: list[str]
    redis_url: str
    min_seconds: float
    min_calls: int
    warmup: int
    naive_frames: int
    soak_seconds: float
    cache_dir: str
    memory_streams: bool
    repeat: int = 1
    naive_threads: list[int | None] = field(default_factory=lambda: [None])


def entry(mode: str, task: str, inp: Inputs, backend: str, batch: int, fps: float, lat: dict[str, float],
          frames: int, **extra: Any) -> dict[str, Any]:
    tasks = task.split("+")
    model = " + ".join(inp.model_names[t] for t in tasks)
    sides = sorted({inp.input_size.get(t, 0) for t in tasks})
    size: list[int] | list[list[int]] = [sides[0], sides[0]] if len(sides) == 1 else [[s, s] for s in sides]
    return {"mode": mode, "task": task, "model": model, "backend": backend, "batch": batch, "input": size,
            "fps": round(fps, 2), "latency_ms": lat, "frames": frames, **extra}


def _median(values: list[float]) -> float:
    return percentile(values, 50)


def _label(backend: str, v: Variant) -> str:
    return backend + (f" t{v.threads}" if v.threads else "")


def run_bench(plan: Plan, inp: Inputs,
              progress: Callable[[list[dict[str, Any]], list[dict[str, Any]], list[str]], None] | None = None,
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Every measurement of ``plan``; ``progress`` gets the results so far after each variant (a run cut short
    by a time limit still leaves its completed measurements behind)."""
    import torch

    import engines as eng

    results: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []
    notes: list[str] = []
    max_batch = max(plan.batches + plan.e2e_batches)
    frames = list(_decode(inp.clip, min(max_batch, 16)))
    combined = "+".join(plan.tasks)
    base = {"tasks": plan.tasks, "models": dict(inp.models),
            "engine": {"device": plan.device, "cache_dir": plan.cache_dir}}
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    net_side = 0
    for v in plan.variants:
        if v.backend == "tensorrt" and not eng.tensorrt_available():
            notes.append(f"variant {v.name}: skipped, TensorRT is not installed here")
            log.warning("variant %s: skipped (TensorRT is not installed)", v.name)
            continue
        paired = "e2e" in plan.modes and v.name in plan.e2e_variants
        with torch_threads(v.threads):
            loaded: dict[str, Any] = {}
            try:
                for task in plan.tasks:  # loading, graph capture and first calls: never timed
                    loaded[task] = eng.create_engine(engine_config_for(task, inp.models[task], v, plan.device,
                                                                       max_batch, plan.cache_dir))
                for task, e in loaded.items():
                    inp.input_size[task] = e.spec.preprocess.height
                    warm = getattr(e, "warmup", None)
                    if warm is not None:
                        warm()
                seg = loaded.get("segmentation")
                net_side = (seg or next(iter(loaded.values()))).spec.preprocess.height
                backend = next(iter(loaded.values())).spec.backend
                extra: dict[str, Any] = {"threads": v.threads} if v.threads else {}
                inputs = engine_inputs(loaded, frames, max_batch) if "engine" in plan.modes else {}

                def engine_timer(b: int, tasks: list[str], inputs: dict[str, list[Any]] = inputs,
                                 loaded: dict[str, Any] = loaded) -> Timer:
                    return bench_engines(loaded, inputs, b, [tasks], plan.device, plan.warmup, plan.min_calls,
                                         plan.min_seconds)[0][1]

                if "engine" in plan.modes:
                    for b in plan.batches:
                        sets = [[t] for t in plan.tasks]
                        if len(plan.tasks) > 1:
                            sets.append(plan.tasks)
                        for tasks in sets:
                            task = "+".join(tasks)
                            if paired and b in plan.e2e_batches and task == combined:
                                continue  # measured below, alternating with the end-to-end runs
                            timer = engine_timer(b, tasks)
                            results.append(entry("engine", task, inp, backend, b, timer.fps,
                                                 latency_ms(timer.calls), timer.frames, **extra,
                                                 cpu_ms_per_frame=timer.cpu_ms_per_frame))
                            log.info("engine %-19s %-24s batch %2d: %8.1f frames/s (p50 %.1f ms)", task,
                                     _label(backend, v), b, timer.fps, results[-1]["latency_ms"]["p50"])
                if paired:
                    for b in plan.e2e_batches:
                        eng_runs: list[Timer] = []
                        e2e_runs: list[E2EResult] = []
                        for i in range(plan.repeat):
                            if "engine" in plan.modes:
                                eng_runs.append(engine_timer(b, plan.tasks))
                            e2e_runs.append(run_e2e(loaded, base, inp.clip, plan.streams, b, plan.redis_url,
                                                    f"{run_id}-{v.label}-b{b}-{i}", inp.warm_clip if i == 0 else None))
                            msg = f"engine {eng_runs[-1].fps:.1f}, " if eng_runs else ""
                            log.info("e2e    %-19s %-24s batch %2d: %sdecode->Redis %.1f frames/s (%d streams, run "
                                     "%d/%d)", combined, _label(backend, v), b, msg, e2e_runs[-1].fps, plan.streams,
                                     i + 1, plan.repeat)
                        if eng_runs:
                            fps_list = [t.fps for t in eng_runs]
                            results.append(entry("engine", combined, inp, backend, b, _median(fps_list),
                                                 latency_ms([c for t in eng_runs for c in t.calls]),
                                                 sum(t.frames for t in eng_runs), **extra,
                                                 fps_runs=[round(f, 2) for f in fps_list],
                                                 cpu_ms_per_frame=round(sum(t.cpu_seconds for t in eng_runs) * 1000
                                                                        / max(1, sum(t.frames for t in eng_runs)),
                                                                        2)))
                        results.append(e2e_entry(e2e_runs, combined, inp, backend, b, plan.streams, extra))
                        if eng_runs:
                            vals = [r.fps / t.fps for r, t in zip(e2e_runs, eng_runs, strict=True) if t.fps > 0]
                            pairs.append({"ratio": "e2e/engine", "task": combined, "backend": backend,
                                          "threads": v.threads, "batch": b, "e2e_fps": results[-1]["fps"],
                                          "engine_fps": results[-2]["fps"], "value": round(_median(vals), 3),
                                          "runs": [round(x, 3) for x in vals],
                                          # the least disturbed run of each (timeit's convention) on a busy machine
                                          "best_value": round(max(r.fps for r in e2e_runs)
                                                              / max(t.fps for t in eng_runs), 3),
                                          "cpu_ms_per_frame": {"e2e": results[-1]["cpu_ms_per_frame"],
                                                               "engine": results[-2]["cpu_ms_per_frame"]},
                                          "how": "median of per-run ratios, engine-only and e2e alternating"})
                        if plan.memory_streams and e2e_runs[-1].gpu_mem_mb is not None and plan.streams > 1:
                            one = run_e2e(loaded, base, inp.clip, 1, b, plan.redis_url,
                                          f"{run_id}-{v.label}-b{b}-one", None)
                            many = max(r.gpu_mem_mb or 0.0 for r in e2e_runs)
                            if one.gpu_mem_mb is not None:
                                results[-1]["gpu_mem_peak_one_stream_mb"] = one.gpu_mem_mb
                                results[-1]["gpu_mem_per_extra_stream_mb"] = round(
                                    (many - one.gpu_mem_mb) / (plan.streams - 1), 1)
                    if plan.soak_seconds > 0:
                        trace: list[tuple[float, float]] = []
                        b = plan.e2e_batches[-1]
                        r = run_e2e(loaded, base, inp.clip, plan.streams, b, plan.redis_url,
                                    f"{run_id}-{v.label}-soak", None, plan.soak_seconds, trace)
                        soak = e2e_entry([r], combined, inp, backend, b, plan.streams, extra)
                        soak.update(soak_seconds=plan.soak_seconds, rss_trace=trace)
                        results.append(soak)
                        log.info("soak   %-19s %-24s batch %2d: %.0f s, %.1f frames/s, RSS %.0f -> %.0f MB",
                                 combined, _label(backend, v), b, r.seconds, r.fps, r.rss_mb["start"],
                                 r.rss_mb["end"])
                del inputs
            finally:
                for e in loaded.values():
                    e.close()
                del loaded
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        if progress is not None:
            progress(results, pairs + ratios(results, with_engine=not pairs), notes)
    if "naive" in plan.modes:
        limit = plan.naive_frames or inp.frames
        dev = "cuda" if plan.device.startswith("cuda") else "cpu"
        for threads in plan.naive_threads:
            with torch_threads(threads):
                timers = [run_naive(inp.models, inp.clip, dev, limit,
                                    net_side or max(inp.input_size.values(), default=384))
                          for _ in range(plan.repeat)]
                n_threads = torch.get_num_threads()
            fps_list = [t.fps for t in timers]
            results.append(entry("naive", combined, inp, f"transformers-{dev}-fp32", 1, _median(fps_list),
                                 latency_ms([c for t in timers for c in t.calls]), sum(t.frames for t in timers),
                                 streams=1, source=[inp.width, inp.height], threads=n_threads,
                                 fps_runs=[round(f, 2) for f in fps_list],
                                 cpu_ms_per_frame=round(sum(t.cpu_seconds for t in timers) * 1000
                                                        / max(1, sum(t.frames for t in timers)), 2)))
            log.info("naive  %-19s transformers-%s t%d: %8.1f frames/s", combined, dev, n_threads,
                     _median(fps_list))
    return results, pairs + ratios(results, with_engine=not pairs), notes


def e2e_entry(runs: list[E2EResult], task: str, inp: Inputs, backend: str, batch: int, streams: int,
              extra: dict[str, Any]) -> dict[str, Any]:
    """One e2e entry from repeated runs: median fps, pooled latencies; the profile of the median run."""
    fps_list = [r.fps for r in runs]
    mid = sorted(runs, key=lambda r: r.fps)[(len(runs) - 1) // 2]
    out = entry("e2e", task, inp, backend, batch, _median(fps_list), latency_ms([x for r in runs for x in r.latencies_s]),
                sum(r.published for r in runs), **extra, streams=streams, source=[inp.width, inp.height],
                fps_runs=[round(f, 2) for f in fps_list],
                cpu_ms_per_frame=round(sum(r.cpu_seconds for r in runs) * 1000 / max(1, sum(r.published for r in runs)),
                                       2),
                stage_ms=mid.stage_ms, batch_mean=round(mid.batch_mean, 2),
                cpu_busy=mid.cpu_busy, thread_cpu_s=mid.thread_cpu_s, rss_mb=mid.rss_mb)
    if mid.gpu_mem_mb is not None:
        out["gpu_mem_peak_mb"] = max(r.gpu_mem_mb or 0.0 for r in runs)
    return out


def ratios(results: list[dict[str, Any]], with_engine: bool = True) -> list[dict[str, Any]]:
    """e2e / engine (same backend, threads, batch and tasks) and e2e / naive, from one file's entries."""
    out: list[dict[str, Any]] = []
    # against the fastest naive loop measured (its thread count is in the entry): no strawman baseline
    naive = sorted((r for r in results if r["mode"] == "naive"), key=lambda r: -r["fps"])[:1]
    for e in results:
        if e["mode"] != "e2e" or "soak_seconds" in e:
            continue
        for g in results:
            if (with_engine and g["mode"] == "engine" and g["task"] == e["task"] and g["backend"] == e["backend"]
                    and g["batch"] == e["batch"] and g.get("threads") == e.get("threads") and g["fps"] > 0):
                out.append({"ratio": "e2e/engine", "task": e["task"], "backend": e["backend"],
                            "threads": e.get("threads"), "batch": e["batch"], "e2e_fps": e["fps"],
                            "engine_fps": g["fps"], "value": round(e["fps"] / g["fps"], 3)})
        for n in naive:
            if n["task"] == e["task"] and n["fps"] > 0:
                out.append({"ratio": "e2e/naive", "task": e["task"], "backend": e["backend"],
                            "threads": e.get("threads"), "batch": e["batch"], "e2e_fps": e["fps"],
                            "naive_fps": n["fps"], "naive_threads": n.get("threads"),
                            "value": round(e["fps"] / n["fps"], 3)})
                if e.get("cpu_ms_per_frame") and n.get("cpu_ms_per_frame"):
                    # load-independent: CPU time per frame (what a frame costs, whatever share of the cores
                    # this process got from a busy machine)
                    out[-1]["cpu_ms_per_frame"] = {"e2e": e["cpu_ms_per_frame"], "naive": n["cpu_ms_per_frame"]}
    return out


def default_out(device: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path("bench/results") / f"{'gpu' if device.startswith('cuda') else 'cpu'}-{stamp}.json"


def register(app: typer.Typer) -> None:
    @app.command()
    def bench(
        model: Annotated[list[str] | None, typer.Option("--model", "-m", help="TASK=PATH|ID. Default: the tiny sample checkpoints (or --random-large).")] = None,
        tasks: Annotated[str, typer.Option(help="segmentation,depth (default both).")] = "segmentation,depth",
        random_large: Annotated[bool, typer.Option("--random-large", help="Random weights of the real DPT-Large architecture (DPT-Large-ADE @480, DPT-Large @384).")] = False,
        device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
        variants: Annotated[str | None, typer.Option(help=f"Engine variants, comma-separated: {', '.join(VARIANTS)}. Default: fp32,fp16,fp16-graphs (+tensorrt when installed) on CUDA; fp32 on CPU.")] = None,
        threads: Annotated[str | None, typer.Option(help="CPU: torch intra-op thread counts to measure, comma-separated (each one a variant). Default: 1 and the core count.")] = None,
        batch_sizes: Annotated[str | None, typer.Option("--batch-sizes", help=f"Engine-only batch sizes. Default {GPU_BATCHES} on CUDA, {CPU_BATCHES} on CPU.")] = None,
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

        from pipeline.cli import build_overrides, setup_logging

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
                             "fp32,fp16,fp16-graphs" + (",tensorrt" if tensorrt_available() else ""))
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
        )
        size = parse_size(clip_size or ("1920x1080" if dev == "cuda" else "1280x720"))
        if "e2e" in mode_list:  # a dead Redis fails now, not after minutes of engine-only measurements
            _check_redis(redis_url)
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


def _check_redis(url: str) -> None:
    from pipeline.config import redact
    from pipeline.sinks import redis_client

    try:
        redis_client(url, timeout=2.0).ping()
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot reach Redis at {redact(url)} ({first}); pass --redis URL, or "
                          "--modes engine,naive to skip the end-to-end runs") from e
