"""Zones in a frame: each stream's zones rasterised once per mask size (:class:`ZoneLayout`), per-zone class
counts and depth computed on the device (:func:`zone_stats`), and the rules stepped per stream with their
metrics (:class:`ZoneRules`)."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.frames import EndOfStream, FrameId
from pipeline.metrics import Metrics
from pipeline.stages.masks import histogram
from pipeline.zones import StreamRules, Zone, ZonePlan, ZoneStats, rasterize

log = logging.getLogger(__name__)


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


class ZoneRules:
    """The zones and rules of every stream of a run: layouts rasterised once per stream and mask size, one
    :class:`StreamRules` per stream (resumed from the state stored with its last published frame), and the rule
    metrics kept in step with the events."""

    def __init__(self, plan: ZonePlan, metrics: Metrics, rule_states: Mapping[str, str] | None = None,
                 ends_rules: Callable[[EndOfStream], bool] | None = None) -> None:
        self.plan = plan
        self.metrics = metrics
        self._rule_states = dict(rule_states or {})  # stream -> state stored with its last published frame
        self._ends_rules = ends_rules  # whether a stream's end ends its active rules (default: always)
        self._layouts: dict[tuple[str, int, int], ZoneLayout | None] = {}
        self._rules: dict[str, StreamRules] = {}
        self._empty_warned: set[str] = set()  # zones said to hold no pixel (once per zone)
        # distance rules on classes need each class's nearest depth in each zone (metric depth only)
        self.per_class_depth = plan.metric and any(r.classes and r.max_distance_m is not None for r in plan.rules)

    def layout(self, sid: str, w: int, h: int, like: torch.Tensor) -> ZoneLayout | None:
        """The zones of stream ``sid`` at a ``w x h`` mask, on ``like``'s device; None when it has none."""
        key = (sid, w, h)
        if key not in self._layouts:
            zones = self.plan.zones_for(sid)
            layout = self._layouts[key] = zone_layout(zones, w, h, like.device) if zones else None
            for name, area in zip(layout.names if layout else (), layout.areas if layout else (), strict=True):
                if area == 0 and name not in self._empty_warned:
                    self._empty_warned.add(name)
                    log.warning("zone %r holds no pixel centre of the %dx%d mask of stream %r: its coverage stays 0 "
                                "and its rules never start (make the polygon larger, or the mask with --mask-size)",
                                name, w, h, sid)
        return self._layouts[key]

    def restore(self, sid: str, state: str | None) -> None:
        """Stream ``sid`` starts (again) from ``state``, not from what an earlier reading of it left here."""
        self._rules.pop(sid, None)
        self._rule_states.pop(sid, None)
        if state and self.plan.rules_for(sid):
            self._rule_states[sid] = state

    def stream_rules(self, sid: str) -> StreamRules | None:
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

    def step(self, frame: FrameId, stats: Mapping[str, ZoneStats], has_mask: bool) \
            -> tuple[list[dict[str, Any]], StreamRules] | None:
        """Step the rules of ``frame``'s stream on its zone statistics: the events and the stream's rules after
        them, or None when the stream has no rules."""
        sr = self.stream_rules(frame.stream_id)
        if sr is None:
            return None
        events = sr.step(frame.index, frame.wall_time, stats, has_mask)
        self._count(frame.stream_id, events)
        return events, sr

    def end(self, eos: EndOfStream) -> EndOfStream | None:
        """The end of a stream ends its active rules (not when the run is only interrupted: see ``ends_rules``):
        ``eos`` with the closing events and the final state, or None when nothing ends."""
        if self._ends_rules is not None and not self._ends_rules(eos):
            return None
        sr = self.stream_rules(eos.stream_id)
        if sr is None:
            return None
        events = sr.end()
        self._count(eos.stream_id, events)
        self._rules.pop(eos.stream_id, None)
        return dataclasses.replace(eos, alerts=tuple(events), rule_state=sr.dump())
