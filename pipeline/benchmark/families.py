"""Engine-only rows for the other DPT-family architectures (``bench --families``, ``bench --random-large``).

``--families``: the tiny random-weight checkpoint of every depth family (:mod:`pipeline.checkpoints`: DPT-Hybrid,
BEiT-, SwinV2-, DINOv2-backed DPT, Depth Anything V1/V2 relative and metric), so a CPU run has a row per
architecture. ``--random-large``: also a Depth-Anything-V2-Large-sized model (DINOv2 ViT-L/14, network side 518
with the source's aspect ratio kept, random weights), the model most depth users run. Each row times
``engine.infer`` on device-resident preprocessed frames of the clip, at the network shape of the clip's
resolution.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.benchmark.engine import bench_engines, engine_config_for, engine_inputs
from pipeline.benchmark.plan import Variant
from pipeline.benchmark.timing import latency_ms, torch_threads

log = logging.getLogger("dptstream.bench")
LARGE_NAME = "depth-anything/Depth-Anything-V2-Large-hf (random weights)"


@dataclass(frozen=True)
class FamilyModel:
    name: str  # what the JSON says about the model
    path: Path


def family_models(work: Path, families: bool, random_large: bool) -> list[FamilyModel]:
    """The checkpoints to measure (built once under ``work`` and reused)."""
    from pipeline.checkpoints import DEPTH_FAMILIES, FAMILIES, make_family_checkpoint

    out: list[FamilyModel] = []
    if families:
        for name in DEPTH_FAMILIES:
            if name == "dpt":  # the main depth row already measures the tiny ViT DPT
                continue
            path = work / "families" / name
            if not (path / "config.json").exists():
                make_family_checkpoint(path, name)
            out.append(FamilyModel(f"{name} tiny, like {FAMILIES[name].stands_for} (random weights)", path))
    if random_large:
        path = work / "depth-anything-v2-large-random"
        if not (path / "config.json").exists():
            log.info("building random-weight Depth-Anything-V2-Large (ViT-L/14 at 518) in %s", path)
            make_family_checkpoint(path, "depth-anything-v2", large=True)
        out.append(FamilyModel(LARGE_NAME, path))
    return out


def bench_family_rows(models: list[FamilyModel], frames: list[Any], variants: list[Variant], device: str,
                      batches: list[int], warmup: int, min_calls: int, min_seconds: float, cache_dir: str,
                      tensorrt_ok: bool) -> list[dict[str, Any]]:
    """One ``engine`` row per model, variant and batch size."""
    import torch

    import engines as eng

    rows: list[dict[str, Any]] = []
    src_h, src_w = frames[0].shape[:2]
    for m in models:
        for v in variants:
            if v.backend == "tensorrt" and not tensorrt_ok:
                continue
            with torch_threads(v.threads):
                e = eng.create_engine(engine_config_for("depth", str(m.path), v, device, max(batches), cache_dir))
                try:
                    shape = e.spec.network_shape(src_h, src_w)
                    e.warmup([shape])
                    inputs = engine_inputs({"depth": e}, frames, max(batches))
                    for b in batches:
                        timer = bench_engines({"depth": e}, inputs, b, [["depth"]], device, warmup, min_calls,
                                              min_seconds)[0][1]
                        extra: dict[str, Any] = {"threads": v.threads} if v.threads else {}
                        rows.append({
                            "mode": "engine", "task": "depth", "model": m.name, "backend": e.spec.backend,
                            "batch": b, "input": list(shape), "fps": round(timer.fps, 2),
                            "latency_ms": latency_ms(timer.calls), "frames": timer.frames,
                            "architecture": e.spec.architecture, "depth_kind": e.spec.depth_kind,
                            "source": [src_w, src_h], "cpu_ms_per_frame": timer.cpu_ms_per_frame, **extra,
                        })
                        log.info("engine depth  %-60s %-20s batch %2d: %8.1f frames/s (%dx%d input)", m.name,
                                 e.spec.backend, b, timer.fps, shape[1], shape[0])
                finally:
                    e.close()
                    del e
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
    return rows
