"""Engine-only throughput: inputs prepared once, then ``engine.infer`` timed per batch size."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.benchmark.plan import COMBINED, Variant
from pipeline.benchmark.timing import Timer
from pipeline.config import ConfigError

# -- inputs: clip and checkpoints ---------------------------------------------------------------------------
log = logging.getLogger("dptstream")


@dataclass
class Inputs:
    clip: Path
    warm_clip: Path
    width: int
    height: int
    frames: int
    models: dict[str, str]
    model_names: dict[str, str]  # what the JSON says about each model
    input_shape: dict[str, tuple[int, int]] = field(default_factory=dict)  # network (h, w) used for the clip


def prepare_inputs(work: Path, tasks: list[str], models: dict[str, str], random_large: bool, clip: Path | None,
                   clip_size: tuple[int, int], clip_frames: int, device: str = "cuda") -> Inputs:
    """``random_large``: random weights of real architectures: DPT-Large (ADE at 480, depth at 384) on CUDA;
    on CPU the sizes CPU users run, DPT-Base ADE at 384 and Depth-Anything-V2-Small at 518."""
    from pipeline.checkpoints import REALISTIC, make_realistic_checkpoint
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
        elif random_large and device == "cpu":
            which = "dpt-base-ade" if task == "segmentation" else "depth-anything-v2-small"
            path = work / f"{which}-random"
            if not (path / "config.json").exists():
                log.info("building random-weight %s in %s", REALISTIC[which], path)
                make_realistic_checkpoint(path, which)
            chosen[task] = str(path)
            names[task] = f"{REALISTIC[which]} (random weights)"
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
    n = int(facts["frames"] or 0) or sum(1 for _ in decode_frames(clip))
    return Inputs(clip, warm, w, h, n, chosen, names)


def decode_frames(path: Path, limit: int | None = None) -> Iterator[Any]:
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
                        cuda_graphs=v.cuda_graphs, cache_dir=cache_dir, threads=v.threads,
                        fp32_softmax=v.fp32_softmax)


def tensorrt_facts(engines: dict[str, Any]) -> dict[str, Any]:
    """TensorRT's own device memory (invisible to torch's counters) and the attention report, per task."""
    out: dict[str, Any] = {}
    for task, e in engines.items():
        if getattr(e, "device_memory_bytes", None) is None:
            continue
        out[task] = {"device_memory_mb": round(e.device_memory_bytes / 2**20, 1),
                     "plan_mb": round(getattr(e, "plan_bytes", 0) / 2**20, 1),
                     "attention": getattr(e, "layers", None)}
    return out


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
