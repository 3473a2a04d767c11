"""Checkpoints of every supported DPT-family architecture, and the transformers depth oracle for them.

The oracle is transformers' own path, as a user would run it: ``AutoImageProcessor`` +
``AutoModelForDepthEstimation`` (``AutoModelForSemanticSegmentation`` for segmentation) + the processor's
``post_process_depth_estimation`` at the target size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.checkpoints import FAMILIES, make_family_checkpoint

CORR_MIN = 0.99  # depth-map correlation with the oracle
P99_MAX = 0.05  # 99th percentile of |error|, as a fraction of the oracle's range


def make_all(root: Path, families: tuple[str, ...] | None = None) -> dict[str, Path]:
    return {name: make_family_checkpoint(root / name, name) for name in (families or tuple(FAMILIES))}


class DepthOracle:
    """transformers' processor + model + ``post_process_depth_estimation`` for one depth checkpoint."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        self.proc = AutoImageProcessor.from_pretrained(path)
        self.model = AutoModelForDepthEstimation.from_pretrained(path).eval()

    @torch.inference_mode()
    def depth_map(self, image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
        inputs = self.proc(images=image, return_tensors="pt")
        out = self.model(**inputs)
        d = self.proc.post_process_depth_estimation(out, target_sizes=[size_hw])[0]["predicted_depth"]
        return d.numpy().astype(np.float64)

    @torch.inference_mode()
    def network_input(self, image: np.ndarray) -> torch.Tensor:
        return self.proc(images=image, return_tensors="pt")["pixel_values"]  # type: ignore[no-any-return]


def agreement(ours: np.ndarray, oracle: np.ndarray) -> tuple[float, float]:
    """``(correlation, p99 |error| / oracle range)`` of two depth maps of one shape."""
    a, b = np.asarray(ours, np.float64).ravel(), np.asarray(oracle, np.float64).ravel()
    assert a.shape == b.shape, (a.shape, b.shape)
    corr = float(np.corrcoef(a, b)[0, 1])
    span = float(b.max() - b.min()) or 1.0
    return corr, float(np.percentile(np.abs(a - b), 99)) / span


def decode_depth_png(data: bytes, kind: str, lo: float, hi: float) -> np.ndarray:
    """A published ``depth_map`` PNG back to depth values: millimetres for metric, else ``lo..hi`` scaled."""
    import io

    from PIL import Image

    raw = np.asarray(Image.open(io.BytesIO(data)), dtype=np.float64)
    if kind == "metric":
        return raw / 1000.0
    return lo + raw / 65535.0 * (hi - lo)


class SegmentationOracle:
    """transformers' processor + model + ``post_process_semantic_segmentation`` for one segmentation checkpoint."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

        self.proc = AutoImageProcessor.from_pretrained(path)
        self.model = AutoModelForSemanticSegmentation.from_pretrained(path).eval()

    @torch.inference_mode()
    def mask(self, image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
        out = self.model(**self.proc(images=image, return_tensors="pt"))
        m = self.proc.post_process_semantic_segmentation(out, target_sizes=[size_hw])[0]
        return m.numpy().astype(np.int64)
