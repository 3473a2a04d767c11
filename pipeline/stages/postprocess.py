"""Logits -> class mask, depth -> summary. Runs on the engine's device; only small results reach the host."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.frames import EndOfStream, Inferred, Result
from pipeline.metrics import Metrics
from pipeline.queues import NamedQueue
from pipeline.stages.base import Stage
from pipeline.stages.depth import DepthStats, depth_dict, depth_stats, has_nonfinite, resize_depth
from pipeline.stages.gpu import StageStream, to_host_async, wait_event
from pipeline.stages.masks import class_counts, class_fractions, mask_array, mask_size, segment
from pipeline.stages.zoning import ZoneLayout, ZoneRules, ZoneTensors, zone_results, zone_stats
from pipeline.zones import ZonePlan


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
        self.zones = ZoneRules(zones, metrics, rule_states, ends_rules) if zones else None
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
        like = mask_t if mask_t is not None else flat
        layout = zt = None
        if self.zones is not None and like is not None:
            layout = self.zones.layout(item.id.stream_id, w, h, like)
            if layout is not None:
                zt = zone_stats(layout, mask_t, flat, hist, self.kind == "metric", self.zones.per_class_depth)
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

    def restore_rules(self, sid: str, state: str | None) -> None:
        """A stream joins (again): its rules start from ``state`` (saved with its last published frame), not from
        what an earlier reading of the same stream id left here. Called when none of its frames is in flight."""
        if self.zones is not None:
            self.zones.restore(sid, state)

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
        stepped = self.zones.step(item.id, stats, mask is not None) if self.zones is not None else None
        if stepped is None:
            return Result(item.id, mask, classes or {}, depth, depth_map, item.image, zones_json)
        events, sr = stepped
        return Result(item.id, mask, classes or {}, depth, depth_map, item.image, zones_json, tuple(events),
                      sr.dump(), frozenset(r.zone for r in sr.active))

    def on_end_of_stream(self, eos: EndOfStream) -> EndOfStream | None:
        """The end of a stream ends its active rules (not when the run is only interrupted: see ``ends_rules``)."""
        return self.zones.end(eos) if self.zones is not None else None

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
