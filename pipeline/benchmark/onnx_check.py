"""Export FP32/FP16 ONNX graphs and check them with onnxruntime (``build-engine --onnx-only``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError

# what an export must reach on the check frames: FP32 >= 99.9 %, FP16 >= 99 % of mask pixels agree with torch
FP32_MIN_AGREEMENT = 0.999


FP16_MIN_AGREEMENT = 0.99


log = logging.getLogger("dptstream")


def check_frames(n: int = 4, width: int = 640, height: int = 360) -> list[Any]:
    """Real-content frames (pans over photographs), as ``H x W x 3`` uint8 tensors."""
    import torch

    from pipeline.sample import make_frames

    return [torch.from_numpy(f.copy()) for seed in range(2) for f in make_frames(n // 2 or 1, width, height,
                                                                                 seed=seed)]


def compare(task: str, ref: Any, out: Any, frame_hw: tuple[int, int]) -> dict[str, float]:
    """Segmentation: mask agreement (min over frames) at the frame's mask size. Depth: max |error| / range."""
    from pipeline.stages.masks import mask_size, segment

    if task == "segmentation":
        w, h = mask_size("default", frame_hw[1], frame_hw[0], int(ref.shape[-1]))
        agree = [float((segment(ref[i], (h, w)) == segment(out[i], (h, w))).float().mean())
                 for i in range(ref.shape[0])]
        return {"mask_agreement_min": round(min(agree), 5),
                "mask_agreement_mean": round(sum(agree) / len(agree), 5)}
    import numpy as np

    span = float(ref.max() - ref.min()) or 1.0
    err = (out.float() - ref.float()).abs()
    corr = [float(np.corrcoef(ref[i].flatten().double().numpy(), out[i].flatten().double().numpy())[0, 1])
            for i in range(ref.shape[0])]
    return {"depth_max_error_of_range": round(float(err.max()) / span, 6),
            "depth_mean_error_of_range": round(float(err.mean()) / span, 6),
            "depth_correlation_min": round(min(corr), 6)}


def onnx_only(loaded: Any, cache_dir: str, out_dir: Path | None, threads: int | None,
              source_size: tuple[int, int] | None = None) -> list[str]:
    """Export FP32 and FP16 graphs of ``loaded`` at the network shape of a ``source_size`` (``(w, h)``, default
    640x360) source, check them with onnxruntime on frames of that size; return report lines."""
    import shutil

    import torch

    from engines.onnx_export import OnnxRuntimeEngine, export_onnx, onnx_cache_path
    from engines.preprocess import Preprocessor

    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ConfigError("--onnx-only checks the graphs with onnxruntime, which is not installed "
                          "(pip install 'dptstream[onnx]')") from e
    w, h = source_size or (640, 360)
    frames = check_frames(width=w, height=h)
    shape = loaded.preprocess.network_shape(h, w)
    x = Preprocessor(loaded.preprocess)(frames)
    with torch.inference_mode():
        ref = loaded.module(x).float()
    lines: list[str] = []
    outs: dict[str, Any] = {}
    for precision in ("fp32", "fp16"):
        path = onnx_cache_path(cache_dir, loaded, precision, shape=shape)
        if path.exists():
            log.info("reusing exported ONNX graph %s", path)
        else:
            export_onnx(loaded, path, precision, shape=shape)  # type: ignore[arg-type]
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            dest = out_dir / f"{loaded.task}-{precision}-{shape[1]}x{shape[0]}.onnx"
            shutil.copyfile(path, dest)
            path = dest
        outs[precision] = OnnxRuntimeEngine(path, threads).run(x)
        against = ref if precision == "fp32" else outs["fp32"]
        stats = compare(loaded.task, against, outs[precision], tuple(frames[0].shape[:2]))
        what = "torch fp32" if precision == "fp32" else "onnx fp32"
        lines.append(f"{loaded.task} {precision}: {path} ({path.stat().st_size / 2**20:.1f} MiB); "
                     f"onnxruntime vs {what}: " + ", ".join(f"{k} {v}" for k, v in stats.items()))
        agreement = stats.get("mask_agreement_min", stats.get("depth_correlation_min"))
        need = FP32_MIN_AGREEMENT if precision == "fp32" else FP16_MIN_AGREEMENT
        if agreement is not None and agreement < need:
            what_agrees = "masks agree on" if loaded.task == "segmentation" else "depth maps correlate at"
            msg = (f"{loaded.task} {precision} ONNX graph: {what_agrees} {agreement:.2%} "
                   f"(< {need:.1%}) with {what}")
            if precision == "fp32":
                raise ConfigError(msg + ": the export is wrong")
            log.warning("%s; TensorRT FP16 would be as far off", msg)
    return lines
