"""Logits -> class mask, depth -> summary. Runs on the engine's device; only small results reach the host."""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.frames import MAX_CLASSES, MAX_UINT8_CLASSES, EndOfStream, Inferred, Result
from pipeline.metrics import Metrics
from pipeline.queues import NamedQueue
from pipeline.stages.base import Stage
from pipeline.stages.gpu import StageStream, to_host_async, wait_event
from pipeline.zones import StreamRules, Zone, ZonePlan, ZoneStats, rasterize


def mask_size(spec: str, src_w: int, src_h: int, net: int | tuple[int, int]) -> tuple[int, int]:
    """``(w, h)`` of the published mask for ``--mask-size``.

    ``net`` is the network input of this source: its ``(h, w)`` (one shape per source resolution when the
    checkpoint keeps the aspect ratio), or one side for a square network. Default: the source's aspect ratio
    with the long side equal to the network's long side; ``network``: the network's own grid.
    """
    net_h, net_w = (net, net) if isinstance(net, int) else (int(net[0]), int(net[1]))
    if spec == "source":
        return src_w, src_h
    if spec == "network":
        return net_w, net_h
    if spec == "default":
        side = max(net_h, net_w)
        if src_w >= src_h:
            return side, max(1, round(src_h * side / src_w))
        return max(1, round(src_w * side / src_h)), side
    w, h = spec.split("x")
    return int(w), int(h)


def segment(logits: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """``C x h x w`` logits -> ``H x W`` class ids: bilinear resize of the logits, then argmax.

    uint8 for up to 256 classes; int32 for more (never wrapped; :func:`mask_array` makes it the published
    uint16).

    The same computation as transformers' ``post_process_semantic_segmentation(target_sizes=[size])``.
    On CPU the logits are kept channels-last (DPT's head already emits them so), where both the resize and
    a per-pixel argmax over contiguous class scores are several times faster than over ``C x H x W``.
    """
    cpu = logits.device.type == "cpu"
    if cpu:
        # batch dim added through the HWC view, so the strides read as channels-last (a plain unsqueeze gives
        # an ambiguous batch stride: interpolate then returns C x H x W and the argmax runs ~6x slower)
        x = logits.float().permute(1, 2, 0).unsqueeze(0).permute(0, 3, 1, 2)
        x = x.contiguous(memory_format=torch.channels_last)
    else:
        # FP16 logits are resized in FP16 (CUDA's bilinear kernel accumulates in float32) and argmaxed as they
        # come: no full-resolution FP32 copy. BF16's 8-bit mantissa makes ties of near-equal classes common
        # after rounding, so BF16 logits are upcast first (one frame's, freed at once).
        x = logits.unsqueeze(0)
        if x.dtype not in (torch.float16, torch.float32):
            x = x.float()
    if tuple(x.shape[-2:]) != tuple(size_hw):
        x = F.interpolate(x, size=size_hw, mode="bilinear", align_corners=False)
    wide = logits.shape[0] > MAX_UINT8_CLASSES
    if cpu:
        hwc = x[0].permute(1, 2, 0)
        if hwc.is_contiguous():
            return torch.from_numpy(hwc.numpy().argmax(axis=-1).astype(np.int32 if wide else np.uint8))
    return x[0].argmax(dim=0).to(torch.int32 if wide else torch.uint8)


def mask_array(mask: torch.Tensor) -> np.ndarray:
    """A host mask tensor -> the published array: uint8 as is, wider ids as uint16 (at most 65536 classes).

    A class id past 65535 raises ``ValueError`` rather than wrap (such checkpoints are refused at load)."""
    a = mask.cpu().numpy()
    if a.dtype == np.uint8:
        return a
    if a.size and (int(a.max()) >= MAX_CLASSES or int(a.min()) < 0):
        raise ValueError(f"class id {int(a.max())} does not fit a 16-bit mask (at most {MAX_CLASSES} classes)")
    return a.astype(np.uint16)


def histogram(keys: torch.Tensor, length: int) -> torch.Tensor:
    """Counts of each value ``0 .. length-1`` in ``keys`` (int64, exactly ``length`` long for keys < length).

    On CUDA a scatter-add: ``torch.bincount`` there reads the maximum back to the host (a synchronisation).
    """
    flat = keys.reshape(-1).long()
    if flat.is_cuda:
        out = torch.zeros(length, dtype=torch.int64, device=flat.device)
        return out.scatter_add_(0, flat, torch.ones_like(flat))
    return torch.bincount(flat, minlength=length)


def class_counts(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    return histogram(mask, num_classes)


def class_fractions(mask: torch.Tensor, num_classes: int, counts: torch.Tensor | None = None) -> dict[int, float]:
    c = (counts if counts is not None else class_counts(mask, num_classes)).cpu().numpy()
    total = float(mask.numel())
    return {int(k): round(float(c[k]) / total, 6) for k in np.nonzero(c)[0]}


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


# -- zones -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ZoneLayout:
    """The zones of one stream rasterised at one mask size, as index tensors on the device (made once)."""

    names: tuple[str, ...]
    areas: tuple[int, ...]  # pixels inside each zone
    index: torch.Tensor  # int64: flat pixel indices of every zone, zone after zone (zones may overlap)
    owner: torch.Tensor  # int64: the zone number of each element of ``index``
    starts: tuple[int, ...]  # where each zone's pixels begin in ``index``
    index_np: np.ndarray  # the same as numpy, for the CPU path
    owner_np: np.ndarray


def zone_layout(zones: Sequence[Zone], width: int, height: int, device: str | torch.device) -> ZoneLayout:
    inside = np.stack([rasterize(z.polygon, width, height).reshape(-1) for z in zones])
    areas = tuple(int(a) for a in inside.sum(axis=1))
    index = np.concatenate([np.flatnonzero(row) for row in inside]).astype(np.int64)
    owner = np.repeat(np.arange(len(zones), dtype=np.int64), areas)
    starts = tuple(int(v) for v in np.cumsum((0, *areas[:-1])))
    return ZoneLayout(tuple(z.name for z in zones), areas, torch.from_numpy(index).to(device),
                      torch.from_numpy(owner).to(device), starts, index, owner)


@dataclass
class ZoneTensors:
    """Per-zone numbers of one frame as small tensors (see :func:`zone_stats`)."""

    counts: torch.Tensor | None = None  # zones x classes int64
    depth: torch.Tensor | None = None  # zones x 2: median, nearest
    class_nearest: torch.Tensor | None = None  # zones x classes: nearest depth of each class in each zone

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.counts, self.depth, self.class_nearest) if t is not None]

    def replace(self, tensors: list[torch.Tensor]) -> ZoneTensors:
        it = iter(tensors)
        return ZoneTensors(*(next(it) if t is not None else None
                             for t in (self.counts, self.depth, self.class_nearest)))


def zone_stats(layout: ZoneLayout, mask: torch.Tensor | None, depth_flat: torch.Tensor | None, num_classes: int,
               metric: bool = False, per_class_depth: bool = False) -> ZoneTensors:
    """Class pixel counts inside each zone (one integer histogram over ``zone * num_classes + class``) and,
    with depth, each zone's lower median (``kthvalue``) and nearest value (the highest relative inverse depth,
    or the lowest metres). All on the mask's device, without a host copy or synchronisation (the zones' pixel
    counts are known on the host from rasterisation); ``per_class_depth`` adds the nearest value of each class
    in each zone (for distance rules on classes).
    """
    like = mask if mask is not None else depth_flat
    if like is not None and like.device.type == "cpu":
        return _zone_stats_numpy(layout, mask, depth_flat, num_classes, metric, per_class_depth)
    return _zone_stats_torch(layout, mask, depth_flat, num_classes, metric, per_class_depth)


def _zone_stats_torch(layout: ZoneLayout, mask: torch.Tensor | None, depth_flat: torch.Tensor | None,
                      num_classes: int, metric: bool, per_class_depth: bool) -> ZoneTensors:
    """:func:`zone_stats` in torch ops on the tensors' device (the GPU path)."""
    z = len(layout.names)
    out = ZoneTensors()
    keys = None
    if mask is not None:
        keys = mask.reshape(-1)[layout.index].long() + layout.owner * num_classes
        out.counts = histogram(keys, z * num_classes).reshape(z, num_classes)
    if depth_flat is not None:
        vals = depth_flat[layout.index]
        rows = []
        for start, area in zip(layout.starts, layout.areas, strict=True):
            if area == 0:  # a zone with no pixel centre inside at this mask size
                rows.append(torch.zeros(2, dtype=vals.dtype, device=vals.device))
                continue
            seg = vals[start:start + area]
            rows.append(torch.stack([seg.kthvalue((area - 1) // 2 + 1).values, seg.min() if metric else seg.max()]))
        out.depth = torch.stack(rows)
        if per_class_depth and keys is not None:
            fill = math.inf if metric else -math.inf
            near = torch.full((z * num_classes,), fill, dtype=vals.dtype, device=vals.device)
            near.scatter_reduce_(0, keys, vals, "amin" if metric else "amax", include_self=True)
            out.class_nearest = near.reshape(z, num_classes)
    return out


def _zone_stats_numpy(layout: ZoneLayout, mask: torch.Tensor | None, depth_flat: torch.Tensor | None,
                      num_classes: int, metric: bool, per_class_depth: bool) -> ZoneTensors:
    """:func:`zone_stats` on CPU, in numpy: the same numbers without torch's intra-op thread pool, whose
    start-up per small op costs more than the work when the cores are busy with inference."""
    z = len(layout.names)
    out = ZoneTensors()
    keys = None
    if mask is not None:
        m = mask.reshape(-1).numpy()
        keys = m[layout.index_np].astype(np.int64) + layout.owner_np * num_classes
        out.counts = torch.from_numpy(np.bincount(keys, minlength=z * num_classes).reshape(z, num_classes))
    if depth_flat is not None:
        vals = depth_flat.reshape(-1).float().numpy()[layout.index_np]
        rows = np.zeros((z, 2), dtype=np.float32)
        for i, (start, area) in enumerate(zip(layout.starts, layout.areas, strict=True)):
            if area == 0:
                continue
            seg = vals[start:start + area]
            k = (area - 1) // 2
            rows[i, 0] = np.partition(seg, k)[k]
            rows[i, 1] = seg.min() if metric else seg.max()
        out.depth = torch.from_numpy(rows)
        if per_class_depth and keys is not None:
            near = np.full(z * num_classes, np.inf if metric else -np.inf, dtype=np.float32)
            (np.minimum if metric else np.maximum).at(near, keys, vals)
            out.class_nearest = torch.from_numpy(near.reshape(z, num_classes))
    return out


def zone_results(layout: ZoneLayout, zt: ZoneTensors) -> dict[str, ZoneStats]:
    """Host :class:`ZoneTensors` -> one :class:`ZoneStats` per zone."""
    counts = zt.counts.numpy() if zt.counts is not None else None
    depth = zt.depth.tolist() if zt.depth is not None else None
    near = zt.class_nearest.numpy() if zt.class_nearest is not None else None
    out: dict[str, ZoneStats] = {}
    for i, (name, area) in enumerate(zip(layout.names, layout.areas, strict=True)):
        c: dict[int, int] = {}
        cn: dict[int, float] = {}
        if counts is not None:
            present = np.flatnonzero(counts[i])
            c = {int(k): int(counts[i, k]) for k in present}
            if near is not None:
                cn = {int(k): float(near[i, k]) for k in present}
        med = nearest = None
        if depth is not None and area > 0 and math.isfinite(depth[i][0]) and math.isfinite(depth[i][1]):
            med, nearest = float(depth[i][0]), float(depth[i][1])  # NaN output: the zone's depth is unknown
        cn = {k: v for k, v in cn.items() if math.isfinite(v)}
        out[name] = ZoneStats(area, c, med, nearest, cn)
    return out


@dataclass
class _Launched:
    """A frame whose postprocessing is queued on the GPU; its small results land in pinned host memory."""

    item: Inferred
    mask: torch.Tensor | None
    counts: torch.Tensor | None
    depth: DepthStats | None
    depth_map: torch.Tensor | None
    event: Any
    zones: ZoneTensors | None = None
    layout: ZoneLayout | None = None


class PostprocessStage(Stage):
    """Logits -> uint8 mask at the mask size + class fractions; depth -> summary. Small results to host.

    On CUDA the work runs on this stage's own stream after the inference event, and only the uint8 mask, the
    class histogram and the depth summary numbers are copied back, asynchronously into pinned memory. Up to
    ``inflight`` frames are queued before the oldest is waited for (its event alone), so the host formats one
    frame's results while the GPU computes the next ones. On CPU each frame is finished at once.
    """

    name = "postprocess"

    def __init__(self, inq: NamedQueue[Any], outq: NamedQueue[Any], metrics: Metrics, abort: threading.Event,
                 mask_spec: str, net_side: int | Callable[[int, int], tuple[int, int]], num_classes: int,
                 depth_grid: int, depth_kind: str, keep_depth_map: bool = False,
                 device: str | torch.device | None = None, inflight: int = 4,
                 zones: ZonePlan | None = None, rule_states: Mapping[str, str] | None = None,
                 ends_rules: Callable[[EndOfStream], bool] | None = None) -> None:
        super().__init__(inq, outq, metrics, abort)
        self.plan = zones if zones else None
        self._rule_states = dict(rule_states or {})  # stream -> state stored with its last published frame
        self._ends_rules = ends_rules  # whether a stream's end ends its active rules (default: always)
        self._layouts: dict[tuple[str, int, int], ZoneLayout | None] = {}
        self._rules: dict[str, StreamRules] = {}
        self._per_class_depth = self.plan is not None and self.plan.metric and any(
            r.classes and r.max_distance_m is not None for r in self.plan.rules)
        self.mask_spec = mask_spec
        # one side (a square network), or (src_h, src_w) -> the network's (h, w) for that source
        self.net_side = net_side
        self._net_shapes: dict[tuple[int, int], tuple[int, int]] = {}
        self.num_classes = num_classes
        self.grid = depth_grid
        self.kind = depth_kind
        self.keep_depth_map = keep_depth_map
        self._stream = StageStream(device) if device is not None else None  # else: the first item's device
        self.inflight = max(1, inflight)
        self._queued: collections.deque[_Launched] = collections.deque()

    def _stream_for(self, item: Inferred) -> StageStream:
        if self._stream is None:
            first = next(iter(item.outputs.values()), None)
            self._stream = StageStream(first.device if isinstance(first, torch.Tensor) else "cpu")
        return self._stream

    def _net(self, src_h: int, src_w: int) -> int | tuple[int, int]:
        """The network input shape for a source resolution (computed once per resolution)."""
        if isinstance(self.net_side, int):
            return self.net_side
        key = (src_h, src_w)
        if key not in self._net_shapes:
            self._net_shapes[key] = self.net_side(src_h, src_w)
        return self._net_shapes[key]

    def _launch(self, item: Inferred) -> _Launched:
        """Queue every computation for ``item`` on this stage's stream (on CPU: compute it).

        The stream is entered here, not by the caller: on the legacy default stream (which does not wait on
        torch's non-blocking pool streams) the resize could read logits before the inference wrote them.
        """
        st = self._stream_for(item)
        with st.use():
            return self._launch_on(st, item)

    def _launch_on(self, st: StageStream, item: Inferred) -> _Launched:
        st.wait(item.event)
        start = st.mark()
        st.keep(*item.outputs.values())
        w, h = mask_size(self.mask_spec, item.id.width, item.id.height, self._net(item.id.height, item.id.width))
        hist = max(self.num_classes, 256)
        mask_t = counts = depth_map = None
        stats: DepthStats | None = None
        if "logits" in item.outputs:
            mask_t = segment(item.outputs["logits"], (h, w))
            counts = class_counts(mask_t, hist)
        flat = None
        if "depth" in item.outputs:
            d = resize_depth(item.outputs["depth"], (h, w))
            flat = d.reshape(-1)
            stats = depth_stats(d, mask_t, self.grid, self.kind, hist, counts)
            if self.keep_depth_map:
                depth_map = d
        layout = self._layout(item.id.stream_id, w, h, (mask_t if mask_t is not None else flat))
        zt = None
        if layout is not None:
            zt = zone_stats(layout, mask_t, flat, hist, self.kind == "metric", self._per_class_depth)
        if st.active:
            mask_t = to_host_async(mask_t) if mask_t is not None else None
            counts = to_host_async(counts) if counts is not None else None
            stats = stats.replace([to_host_async(t) for t in stats.tensors()]) if stats is not None else None
            depth_map = to_host_async(depth_map) if depth_map is not None else None
            zt = zt.replace([to_host_async(t) for t in zt.tensors()]) if zt is not None else None
        # the host waits on this event (in _finish): a blocking-sync one, so the wait sleeps, not spins
        event = st.record(blocking=True, timing=True)
        st.track(start, event)
        return _Launched(item, mask_t, counts, stats, depth_map, event, zt, layout)

    def _layout(self, sid: str, w: int, h: int, like: torch.Tensor | None) -> ZoneLayout | None:
        if self.plan is None or like is None:
            return None
        key = (sid, w, h)
        if key not in self._layouts:  # rasterised once per stream and mask size
            zones = self.plan.zones_for(sid)
            self._layouts[key] = zone_layout(zones, w, h, like.device) if zones else None
        return self._layouts[key]

    def restore_rules(self, sid: str, state: str | None) -> None:
        """A stream joins (again): its rules start from ``state`` (saved with its last published frame), not from
        what an earlier reading of the same stream id left here. Called when none of its frames is in flight."""
        self._rules.pop(sid, None)
        self._rule_states.pop(sid, None)
        if state and self.plan is not None and self.plan.rules_for(sid):
            self._rule_states[sid] = state

    def _stream_rules(self, sid: str) -> StreamRules | None:
        if self.plan is None:
            return None
        sr = self._rules.get(sid)
        if sr is None:
            rules = self.plan.rules_for(sid)
            if not rules:
                return None
            sr = self._rules[sid] = StreamRules(sid, rules, self._rule_states.pop(sid, None))
            for r in rules:
                self.metrics.rule_active.labels(stream=sid, rule=r.name).set(int(sr.states[r.name].active))
        return sr

    def _count(self, sid: str, events: list[dict[str, Any]]) -> None:
        for ev in events:
            self.metrics.rule_events.labels(stream=sid, rule=ev["rule"], state=ev["state"]).inc()
            self.metrics.rule_active.labels(stream=sid, rule=ev["rule"]).set(int(ev["state"] == "start"))

    def _finish(self, job: _Launched) -> Result:
        wait_event(job.event)
        item = job.item
        mask = classes = None
        if job.mask is not None and job.counts is not None:
            classes = class_fractions(job.mask, self.num_classes, counts=job.counts)
            mask = mask_array(job.mask)
        depth = depth_dict(job.depth.replace([t.cpu() for t in job.depth.tensors()]), self.grid, self.kind) \
            if job.depth is not None else None
        if depth is not None and has_nonfinite(depth):  # published with null statistics, counted
            self.metrics.nonfinite.labels(stream=item.id.stream_id, task="depth").inc()
        depth_map = job.depth_map.cpu().numpy() if job.depth_map is not None else None
        if job.zones is None or job.layout is None:
            return Result(item.id, mask, classes or {}, depth, depth_map, item.image)
        stats = zone_results(job.layout, job.zones.replace([t.cpu() for t in job.zones.tensors()]))
        zones_json = {name: zs.as_json(mask is not None) for name, zs in stats.items()}
        sid = item.id.stream_id
        sr = self._stream_rules(sid)
        if sr is None:
            return Result(item.id, mask, classes or {}, depth, depth_map, item.image, zones_json)
        events = sr.step(item.id.index, item.id.wall_time, stats, mask is not None)
        self._count(sid, events)
        return Result(item.id, mask, classes or {}, depth, depth_map, item.image, zones_json, tuple(events),
                      sr.dump(), frozenset(r.zone for r in sr.active))

    def on_end_of_stream(self, eos: EndOfStream) -> EndOfStream | None:
        """The end of a stream ends its active rules (not when the run is only interrupted: see ``ends_rules``)."""
        if self.plan is None or (self._ends_rules is not None and not self._ends_rules(eos)):
            return None
        sr = self._stream_rules(eos.stream_id)
        if sr is None:
            return None
        events = sr.end()
        self._count(eos.stream_id, events)
        self._rules.pop(eos.stream_id, None)
        return dataclasses.replace(eos, alerts=tuple(events), rule_state=sr.dump())

    @property
    def timed_on_gpu(self) -> bool:
        return self._stream is not None and self._stream.active

    def process(self, item: Inferred) -> Iterable[Result]:
        st = self._stream_for(item)
        if not st.active:
            return (self._finish(self._launch(item)),)
        self._queued.append(self._launch(item))
        out = []
        while self._queued and (len(self._queued) > self.inflight or self._queued[0].event.query()):
            out.append(self._finish(self._queued.popleft()))
        self.observe_gpu(st.elapsed())
        return out

    def flush(self) -> Iterable[Result]:
        out = [self._finish(job) for job in self._queued]
        self._queued.clear()
        if self._stream is not None:
            self.observe_gpu(self._stream.elapsed(wait=True))
        return out
