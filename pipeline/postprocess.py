"""Logits -> class mask, depth -> summary. Runs on the engine's device; only small results reach the host."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def mask_size(spec: str, src_w: int, src_h: int, net_side: int) -> tuple[int, int]:
    """``(w, h)`` of the published mask for ``--mask-size`` (default: aspect kept, long side = network side)."""
    if spec == "source":
        return src_w, src_h
    if spec == "network":
        return net_side, net_side
    if spec == "default":
        if src_w >= src_h:
            return net_side, max(1, round(src_h * net_side / src_w))
        return max(1, round(src_w * net_side / src_h)), net_side
    w, h = spec.split("x")
    return int(w), int(h)


def segment(logits: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """``C x h x w`` logits -> ``H x W`` uint8 class ids: bilinear resize of the logits, then argmax.

    The same computation as transformers' ``post_process_semantic_segmentation(target_sizes=[size])``.
    """
    x = logits.unsqueeze(0).float()
    if tuple(x.shape[-2:]) != tuple(size_hw):
        x = F.interpolate(x, size=size_hw, mode="bilinear", align_corners=False)
    return x[0].argmax(dim=0).to(torch.uint8)


def class_fractions(mask: torch.Tensor, num_classes: int) -> dict[int, float]:
    counts = torch.bincount(mask.reshape(-1).long(), minlength=num_classes).cpu().numpy()
    total = float(mask.numel())
    return {int(c): round(float(n) / total, 6) for c in np.nonzero(counts)[0] for n in (counts[c],)}


def resize_depth(depth: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """``h x w`` depth -> ``H x W`` bicubic (as transformers' ``post_process_depth_estimation``)."""
    x = depth.float()
    if tuple(x.shape[-2:]) == tuple(size_hw):
        return x
    return F.interpolate(x[None, None], size=size_hw, mode="bicubic", align_corners=False)[0, 0]


def depth_summary(depth: torch.Tensor, mask: torch.Tensor | None, grid: int = 4,
                  kind: str = "relative_inverse") -> dict[str, Any]:
    """Summary of an ``H x W`` depth map: global stats, a ``grid x grid`` near-field grid, per-class medians.

    ``relative_inverse`` depth: larger = nearer, so a cell's near-field value is its 90th percentile.
    """
    flat = depth.reshape(-1)
    qs = torch.quantile(flat, torch.tensor([0.05, 0.5, 0.95], device=flat.device, dtype=flat.dtype))
    h, w = depth.shape
    near_q = 0.9 if kind == "relative_inverse" else 0.1
    rows = []
    for i in range(grid):
        r0, r1 = i * h // grid, max((i + 1) * h // grid, i * h // grid + 1)
        row = []
        for j in range(grid):
            c0, c1 = j * w // grid, max((j + 1) * w // grid, j * w // grid + 1)
            row.append(torch.quantile(depth[r0:r1, c0:c1].reshape(-1), near_q))
        rows.append(torch.stack(row))
    stats = torch.stack([flat.min(), flat.max(), flat.mean(), qs[0], qs[1], qs[2]]).cpu().tolist()
    out: dict[str, Any] = {
        "kind": kind,
        "min": round(stats[0], 6), "max": round(stats[1], 6), "mean": round(stats[2], 6),
        "p05": round(stats[3], 6), "p50": round(stats[4], 6), "p95": round(stats[5], 6),
        "grid": [[round(v, 6) for v in row] for row in torch.stack(rows).cpu().tolist()],
    }
    if mask is not None:
        m = mask.reshape(-1).long()
        order = torch.argsort(m, stable=True)
        sm, sd = m[order], flat[order]
        classes, counts = torch.unique_consecutive(sm, return_counts=True)
        per_class: dict[str, float] = {}
        start = 0
        for c, n in zip(classes.cpu().tolist(), counts.cpu().tolist(), strict=True):
            per_class[str(c)] = round(float(sd[start : start + n].median()), 6)
            start += n
        out["per_class"] = per_class
    return out
