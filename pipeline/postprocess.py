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
    On CPU the logits are kept channels-last (DPT's head already emits them so), where both the resize and
    a per-pixel argmax over contiguous class scores are several times faster than over ``C x H x W``.
    """
    x = logits.unsqueeze(0).float()
    cpu = x.device.type == "cpu"
    if cpu:
        x = x.contiguous(memory_format=torch.channels_last)
    if tuple(x.shape[-2:]) != tuple(size_hw):
        x = F.interpolate(x, size=size_hw, mode="bilinear", align_corners=False)
    if cpu:
        hwc = x[0].permute(1, 2, 0)
        if hwc.is_contiguous():
            return torch.from_numpy(hwc.numpy().argmax(axis=-1).astype(np.uint8))
    return x[0].argmax(dim=0).to(torch.uint8)


def class_counts(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(mask.reshape(-1).long(), minlength=num_classes)


def class_fractions(mask: torch.Tensor, num_classes: int, counts: torch.Tensor | None = None) -> dict[int, float]:
    c = (counts if counts is not None else class_counts(mask, num_classes)).cpu().numpy()
    total = float(mask.numel())
    return {int(k): round(float(c[k]) / total, 6) for k in np.nonzero(c)[0]}


def resize_depth(depth: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """``h x w`` depth -> ``H x W`` bicubic (as transformers' ``post_process_depth_estimation``)."""
    x = depth.float()
    if tuple(x.shape[-2:]) == tuple(size_hw):
        return x
    return F.interpolate(x[None, None], size=size_hw, mode="bicubic", align_corners=False)[0, 0]


def _quantiles(sorted_flat: torch.Tensor, qs: list[float]) -> torch.Tensor:
    """Linear-interpolated quantiles of an already sorted 1-D tensor (same definition as ``torch.quantile``)."""
    n = sorted_flat.numel()
    pos = torch.tensor(qs, dtype=torch.float64) * (n - 1)
    lo = pos.floor().long()
    hi = pos.ceil().long()
    frac = (pos - lo.double()).to(sorted_flat.device, sorted_flat.dtype)
    lo, hi = lo.to(sorted_flat.device), hi.to(sorted_flat.device)
    return sorted_flat[lo] + (sorted_flat[hi] - sorted_flat[lo]) * frac


def depth_summary(depth: torch.Tensor, mask: torch.Tensor | None, grid: int = 4,
                  kind: str = "relative_inverse", num_classes: int = 256) -> dict[str, Any]:
    """Summary of an ``H x W`` depth map: global stats, a ``grid x grid`` near-field grid, per-class medians.

    ``relative_inverse`` depth: larger = nearer, so a cell's near-field value is its 90th percentile
    (10th for metric depth). Per-class values are lower medians (as ``torch.median``). A handful of sorts,
    no per-class loop, and one small copy to the host.
    """
    flat = depth.reshape(-1).float()
    sorted_flat, order = flat.sort()
    n = flat.numel()
    stats = torch.cat([
        torch.stack([sorted_flat[0], sorted_flat[-1], flat.mean()]),
        _quantiles(sorted_flat, [0.05, 0.5, 0.95]),
    ])
    h, w = depth.shape
    near_q = 0.9 if kind == "relative_inverse" else 0.1
    cells = []
    for i in range(grid):
        r0, r1 = i * h // grid, max((i + 1) * h // grid, i * h // grid + 1)
        for j in range(grid):
            c0, c1 = j * w // grid, max((j + 1) * w // grid, j * w // grid + 1)
            cell = depth[r0:r1, c0:c1].reshape(-1).sort().values
            cells.append(_quantiles(cell, [near_q])[0])
    host = torch.cat([stats, torch.stack(cells)])
    per_class: tuple[torch.Tensor, torch.Tensor] | None = None
    if mask is not None:
        m = mask.reshape(-1).long()
        rank = torch.empty_like(order)
        rank[order] = torch.arange(n, device=order.device)
        by_class = torch.argsort(m * n + rank)  # class-major, depth-ascending within a class
        counts = torch.bincount(m, minlength=num_classes)
        present = torch.nonzero(counts).reshape(-1)
        starts = torch.cumsum(counts, 0) - counts
        med = flat[by_class[starts[present] + (counts[present] - 1) // 2]]
        per_class = (present, med)
    vals = host.cpu().tolist()
    out: dict[str, Any] = {
        "kind": kind,
        "min": round(vals[0], 6), "max": round(vals[1], 6), "mean": round(vals[2], 6),
        "p05": round(vals[3], 6), "p50": round(vals[4], 6), "p95": round(vals[5], 6),
        "grid": [[round(v, 6) for v in vals[6 + i * grid : 6 + (i + 1) * grid]] for i in range(grid)],
    }
    if per_class is not None:
        ids, meds = per_class[0].cpu().tolist(), per_class[1].cpu().tolist()
        out["per_class"] = {str(c): round(v, 6) for c, v in zip(ids, meds, strict=True)}
    return out
