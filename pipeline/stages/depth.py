"""Depth map -> summary: resize, global statistics, the near-field grid and per-class medians, computed as small
tensors on the depth's device (:class:`DepthStats`) and formatted for publishing on the host."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.stages.masks import histogram

# the near-field value of a region: relative inverse depth is larger when nearer, metric depth smaller
NEAR_QUANTILE: dict[str, float] = {"relative_inverse": 0.9, "metric": 0.1}


def resize_depth(depth: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """``h x w`` depth -> ``H x W`` bicubic (as transformers' ``post_process_depth_estimation``)."""
    x = depth.float()
    if tuple(x.shape[-2:]) == tuple(size_hw):
        return x
    return F.interpolate(x[None, None], size=size_hw, mode="bicubic", align_corners=False)[0, 0]


def _quantiles(sorted_flat: torch.Tensor, qs: list[float]) -> torch.Tensor:
    """Linear-interpolated quantiles of an already sorted 1-D tensor (same definition as ``torch.quantile``).

    Positions are computed on the host from the length alone: no host -> device copy, no synchronisation.
    """
    n = sorted_flat.numel()
    vals = []
    for q in qs:
        pos = q * (n - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        frac = float(np.float32(pos - lo))  # the float32 weight torch.quantile uses
        vals.append(sorted_flat[lo] + (sorted_flat[hi] - sorted_flat[lo]) * frac)
    return torch.stack(vals)


def _segment_quantile(values: torch.Tensor, order: torch.Tensor, starts: torch.Tensor, counts: torch.Tensor,
                      q: float) -> torch.Tensor:
    """Per segment of ``order`` (segments ascending by value), the linear-interpolated ``q`` quantile.

    ``counts`` may hold zeros (empty segments): their value is meaningless and masked out by the caller.
    """
    n = values.numel()
    pos = q * (counts - 1).clamp(min=0).double()
    lo = pos.floor().long()
    hi = pos.ceil().long()
    frac = (pos - lo.double()).float()
    a = values[order[(starts + lo).clamp(max=n - 1)]]
    b = values[order[(starts + hi).clamp(max=n - 1)]]
    return a + (b - a) * frac


@dataclass
class DepthStats:
    """A depth summary as a few small tensors (on the device that computed them, or copied to the host).

    ``values``: min, max, mean, p05, p50, p95, then the ``grid x grid`` near-field cells row by row.
    ``class_median`` / ``class_count``: per class id (``num_classes`` long); medians of absent classes are
    meaningless. Made without any device -> host copy, so a GPU stage can copy them back asynchronously.
    """

    values: torch.Tensor
    class_median: torch.Tensor | None = None
    class_count: torch.Tensor | None = None
    class_nearest: torch.Tensor | None = None  # metric depth: per class, the near-field (low) percentile

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.values, self.class_median, self.class_count, self.class_nearest) if t is not None]

    def replace(self, tensors: list[torch.Tensor]) -> DepthStats:
        it = iter(tensors)
        return DepthStats(next(it), next(it) if self.class_median is not None else None,
                          next(it) if self.class_count is not None else None,
                          next(it) if self.class_nearest is not None else None)


def _order(flat: torch.Tensor) -> torch.Tensor:
    """Indices that sort ``flat`` ascending (tie order unspecified; only sorted values are ever used)."""
    if flat.device.type == "cpu":  # numpy's SIMD sort: several times faster than torch's on CPU
        return torch.from_numpy(np.argsort(flat.numpy()))
    return flat.argsort()


def _group(order: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Re-sort ``order`` by small integer ``keys`` (per pixel), stably: key-major, value-ascending within a key."""
    k = keys[order]
    if k.device.type == "cpu":  # a radix sort for 8/16-bit keys
        return order[torch.from_numpy(np.argsort(k.numpy(), kind="stable"))]
    return order[torch.sort(k, stable=True).indices]


def depth_stats(depth: torch.Tensor, mask: torch.Tensor | None, grid: int = 4, kind: str = "relative_inverse",
                num_classes: int = 256, counts: torch.Tensor | None = None) -> DepthStats:
    """The numbers of :func:`depth_summary`, as tensors on ``depth``'s device (see :class:`DepthStats`).

    ``relative_inverse`` depth: larger = nearer, so a cell's near-field value is its 90th percentile;
    ``metric`` depth (metres): the nearest is the 10th percentile, per cell (interpolated) and per class
    (``class_nearest``, the lower 10th percentile, so never above the class's lower median).
    Per-class values are lower medians (as ``torch.median``). One sort of the
    values, then one stable sort by cell and one by class of that order: no per-cell or per-class loop.
    ``counts`` (the mask's class histogram, at least ``num_classes`` long) is reused when given.
    """
    flat = depth.reshape(-1).float().contiguous()
    order = _order(flat)
    sorted_flat = flat[order]
    n = flat.numel()
    stats = torch.cat([
        torch.stack([sorted_flat[0], sorted_flat[-1], flat.mean()]),
        _quantiles(sorted_flat, [0.05, 0.5, 0.95]),
    ])
    h, w = depth.shape
    near_q = NEAR_QUANTILE[kind]
    dev = flat.device
    if h >= grid and w >= grid:
        # cell (i, j) holds rows i*h//grid .. (i+1)*h//grid - 1 and the same for columns
        k = torch.arange(grid, device=dev)
        rows = torch.searchsorted(k * h // grid, torch.arange(h, device=dev), right=True) - 1
        cols = torch.searchsorted(k * w // grid, torch.arange(w, device=dev), right=True) - 1
        cell = (rows[:, None] * grid + cols[None, :]).reshape(-1).to(torch.int16)
        ccount = histogram(cell, grid * grid)
        cstart = torch.cumsum(ccount, 0) - ccount
        cells = _segment_quantile(flat, _group(order, cell), cstart, ccount, near_q)
    else:  # a mask smaller than the grid: cells overlap, one by one
        parts = []
        for i in range(grid):
            r0, r1 = i * h // grid, max((i + 1) * h // grid, i * h // grid + 1)
            for j in range(grid):
                c0, c1 = j * w // grid, max((j + 1) * w // grid, j * w // grid + 1)
                parts.append(_quantiles(depth[r0:r1, c0:c1].reshape(-1).float().sort().values, [near_q])[0])
        cells = torch.stack(parts)
    values = torch.cat([stats, cells])
    if mask is None:
        return DepthStats(values)
    m = mask.reshape(-1)
    if counts is None or counts.numel() < num_classes:
        counts = histogram(m, num_classes)
    counts = counts[:num_classes] if counts.numel() > num_classes else counts
    starts = torch.cumsum(counts, 0) - counts
    by_class = _group(order, m if m.dtype == torch.uint8 else m.long())
    med = flat[by_class[(starts + (counts - 1).clamp(min=0) // 2).clamp(max=n - 1)]]
    nearest = None
    if kind == "metric":  # the lower 10th percentile (an actual pixel's value, as the lower median): <= the median
        low = ((counts - 1).clamp(min=0).double() * near_q).floor().long()
        nearest = flat[by_class[(starts + low).clamp(max=n - 1)]]
    return DepthStats(values, med, counts, nearest)


def finite(v: float) -> float | None:
    """``v`` rounded for publishing, or None (JSON ``null``) when it is NaN or infinite."""
    return round(v, 6) if math.isfinite(v) else None


def depth_dict(stats: DepthStats, grid: int, kind: str) -> dict[str, Any]:
    """Host :class:`DepthStats` -> the published JSON summary (see :func:`depth_summary`).

    A statistic the model's output made NaN or infinite (FP16 overflow, broken weights) is ``None`` (JSON
    ``null``), never NaN: see :func:`has_nonfinite`."""
    vals = stats.values.tolist()
    out: dict[str, Any] = {
        "kind": kind,
        "min": finite(vals[0]), "max": finite(vals[1]), "mean": finite(vals[2]),
        "p05": finite(vals[3]), "p50": finite(vals[4]), "p95": finite(vals[5]),
        "grid": [[finite(v) for v in vals[6 + i * grid : 6 + (i + 1) * grid]] for i in range(grid)],
    }
    if stats.class_median is not None and stats.class_count is not None:
        present = torch.nonzero(stats.class_count).reshape(-1)
        ids, meds = present.tolist(), stats.class_median[present].tolist()
        if stats.class_nearest is not None:  # metric: {"median": m, "nearest": n} in metres per class
            near = stats.class_nearest[present].tolist()
            out["per_class"] = {str(c): {"median": finite(v), "nearest": finite(nv)}
                                for c, v, nv in zip(ids, meds, near, strict=True)}
        else:
            out["per_class"] = {str(c): finite(v) for c, v in zip(ids, meds, strict=True)}
    return out


def has_nonfinite(summary: Any) -> bool:
    """Whether a published summary holds a ``None`` statistic (one the model's output made NaN or Inf)."""
    if isinstance(summary, dict):
        return any(has_nonfinite(v) for k, v in summary.items() if k != "kind")
    if isinstance(summary, list):
        return any(has_nonfinite(v) for v in summary)
    return summary is None


def depth_summary(depth: torch.Tensor, mask: torch.Tensor | None, grid: int = 4,
                  kind: str = "relative_inverse", num_classes: int = 256,
                  counts: torch.Tensor | None = None) -> dict[str, Any]:
    """Summary of an ``H x W`` depth map: global stats, a ``grid x grid`` near-field grid, per-class medians.

    A handful of sorts and one small copy to the host (see :func:`depth_stats` for the definitions).
    """
    stats = depth_stats(depth, mask, grid, kind, num_classes, counts)
    return depth_dict(stats.replace([t.cpu() for t in stats.tensors()]), grid, kind)
