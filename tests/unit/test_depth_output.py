"""Pure parts of the DPT-family pipeline: shape grouping in the batcher, the mask size for non-square networks,
metric depth summaries, and the 16-bit depth-map PNG."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.frames import FrameId, Prepared, Shutdown
from pipeline.metrics import Metrics
from pipeline.queues import NamedQueue
from pipeline.sinks.encode import depth_png_values, encode_depth_png
from pipeline.stages.depth import depth_summary
from pipeline.stages.infer import shape_groups
from pipeline.stages.masks import mask_size
from tests.support.entries import split_mask_entry


def _prepared(i: int, h: int, w: int, tasks: tuple[str, ...] = ("depth",)) -> Prepared:
    return Prepared(FrameId("s", i, 0.0, time.time(), w * 4, h * 4), {t: torch.full((1, 3, h, w), float(i))
                                                                     for t in tasks}, None, tasks)


def test_shape_groups_keep_first_seen_order() -> None:
    items = [_prepared(0, 98, 168), _prepared(1, 168, 98), _prepared(2, 98, 168), _prepared(3, 98, 168, ("x",))]
    assert shape_groups(items, "depth") == [[0, 2], [1]]
    assert shape_groups(items, "x") == [[3]]


def test_batcher_runs_each_shape_as_one_batch() -> None:
    from pipeline.stages import InferStage

    class FakeEngine:
        def __init__(self) -> None:
            self.calls: list[tuple[int, ...]] = []

        def infer(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            self.calls.append(tuple(x.shape))
            return {"depth": x[:, 0] * 1.0}  # each frame's depth carries its own index

    inq: NamedQueue[object] = NamedQueue("in", 100)
    outq: NamedQueue[object] = NamedQueue("out", 100)
    eng = FakeEngine()
    st = InferStage(inq, outq, Metrics(), threading.Event(), {"depth": eng}, max_batch=4,  # type: ignore[dict-item]
                    max_wait_ms=200)
    for i, (h, w) in enumerate([(98, 168), (168, 98), (98, 168), (168, 98)]):
        inq.put(_prepared(i, h, w))
    inq.put(Shutdown())
    st.start()
    assert st.join(5)
    assert eng.calls == [(2, 3, 98, 168), (2, 3, 168, 98)]
    outs = [outq.get(0.1) for _ in range(len(outq))]
    got = [o for o in outs if hasattr(o, "outputs")]
    assert [o.id.index for o in got] == [0, 1, 2, 3]  # results in frame order, each with its own output
    for o in got:
        assert float(o.outputs["depth"].mean()) == o.id.index


@pytest.mark.parametrize(("net", "src", "spec", "want"), [
    (384, (1280, 720), "default", (384, 216)),
    ((518, 924), (1280, 720), "default", (924, 520)),
    ((924, 518), (720, 1280), "default", (520, 924)),
    ((518, 924), (1280, 720), "network", (924, 518)),
    ((98, 168), (1280, 720), "source", (1280, 720)),
    ((98, 168), (1280, 720), "64x48", (64, 48)),
])
def test_mask_size_follows_the_sources_network_shape(net: int | tuple[int, int], src: tuple[int, int], spec: str,
                                                     want: tuple[int, int]) -> None:
    assert mask_size(spec, src[0], src[1], net) == want


def test_metric_summary_per_class_median_and_nearest() -> None:
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(36, 64, generator=g) * 20
    mask = torch.randint(0, 4, (36, 64), generator=g, dtype=torch.uint8)
    mask[0, 0] = 9  # a one-pixel class
    s = depth_summary(depth, mask, 4, "metric", 256)
    assert s["kind"] == "metric"
    for c, v in s["per_class"].items():
        vals = np.sort(depth[mask == int(c)].numpy())
        assert v["median"] == pytest.approx(float(vals[(len(vals) - 1) // 2]), abs=1e-5)
        assert v["nearest"] == pytest.approx(float(vals[int((len(vals) - 1) * 0.1)]), abs=1e-5)
        assert v["nearest"] <= v["median"]
    assert s["per_class"]["9"]["nearest"] == s["per_class"]["9"]["median"]
    # the grid's near field is the 10th percentile for metres (smaller = nearer)
    cell = depth[:9, :16].reshape(-1)
    assert s["grid"][0][0] == pytest.approx(float(torch.quantile(cell, 0.1)), abs=1e-5)
    rel = depth_summary(depth, mask, 4, "relative_inverse", 256)
    assert all(isinstance(v, float) for v in rel["per_class"].values())  # unchanged schema for relative depth
    assert rel["grid"][0][0] == pytest.approx(float(torch.quantile(cell, 0.9)), abs=1e-5)


def test_depth_png_metric_is_millimetres_clipped_at_65_535_m() -> None:
    d = np.array([[0.0, 1.2345, 2.0], [65.535, 70.0, 0.0004]], np.float32)
    v = depth_png_values(d, "metric", 0.0, 70.0)
    assert (v.dtype == np.uint16 and v.tolist() == [[0, 1234, 2000], [65535, 65535, 0]]) or v[0, 1] == 1235
    png = encode_depth_png(d, {"kind": "metric", "min": 0.0, "max": 70.0})
    back = np.asarray(Image.open(io.BytesIO(png)))
    assert back.astype(np.int64).tolist() == v.astype(np.int64).tolist()


def test_depth_png_relative_spans_min_to_max() -> None:
    g = np.random.default_rng(0)
    d = g.uniform(0.3, 7.0, (27, 48)).astype(np.float32)
    summary = {"kind": "relative_inverse", "min": float(d.min()), "max": float(d.max())}
    png = encode_depth_png(d, summary)
    raw = np.asarray(Image.open(io.BytesIO(png))).astype(np.float64)
    assert raw.min() == 0 and raw.max() == 65535
    decoded = summary["min"] + raw / 65535 * (summary["max"] - summary["min"])  # the README's three lines
    assert np.abs(decoded - d).max() <= (summary["max"] - summary["min"]) / 65535
    flat = encode_depth_png(np.full((4, 4), 2.0, np.float32), {"kind": "relative_inverse", "min": 2.0, "max": 2.0})
    assert np.asarray(Image.open(io.BytesIO(flat))).max() == 0


def test_snapshot_renders_metric_entries_with_units() -> None:
    from pipeline.overlay import depth_units, render_entry

    depth = {"kind": "metric", "min": 0.5, "max": 9.0, "mean": 4, "p05": 0.7, "p50": 4, "p95": 8.5,
             "grid": [[1.0] * 4] * 4, "per_class": {"0": {"median": 2.0, "nearest": 1.0},
                                                    "3": {"median": 8.0, "nearest": 6.0}}}
    fields = split_mask_entry(27, 48, 3, depth)
    pic = render_entry(fields, {0: "wall", 3: "floor"})
    assert pic.ndim == 3 and pic.shape[2] == 3
    left, right = pic[:, : pic.shape[1] // 2], pic[:, pic.shape[1] // 2:]
    assert left.shape == right.shape
    dmap = np.full((27, 48), 3.0, np.float32)
    with_map = render_entry({**fields, "depth_map": encode_depth_png(dmap, depth)}, {})
    assert with_map.shape == pic.shape
    assert depth_units("metric") == "metres" and "relative" in depth_units("relative_inverse")


def test_snapshot_of_a_frame_whose_depth_was_not_finite_says_so() -> None:
    from pipeline.overlay import render_entry

    depth = {"kind": "relative_inverse", "min": None, "max": None, "mean": None, "p05": None, "p50": None,
             "p95": None, "grid": [[None] * 4] * 4}
    fields = split_mask_entry(27, 48, 3, depth)
    pic = render_entry(fields, {0: "wall", 3: "floor"})
    right = pic[:, pic.shape[1] // 2:]
    assert np.median(right) == 64  # a plain grey panel with its caption, no made-up depth picture


def test_pipeline_prepares_each_file_sources_network_shape(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from engines.base import PreprocessSpec
    from pipeline.configfile import load_config
    from pipeline.runtime import Pipeline
    from pipeline.sample import make_clip

    land = make_clip(tmp_path / "land.mp4", frames=2, width=320, height=180)
    port = make_clip(tmp_path / "port.mp4", frames=2, width=180, height=320)

    class Warmed:
        def __init__(self, spec: PreprocessSpec) -> None:
            self.spec = SimpleNamespace(preprocess=spec, network_shape=spec.network_shape, task="depth",
                                        device="cpu", dtype=torch.float32, max_batch=1, activations_per_pixel=1.0)
            self.shapes: list[tuple[int, int]] = []

        def warmup(self, shapes: list[tuple[int, int]]) -> None:
            self.shapes += shapes

    keep = Warmed(PreprocessSpec(98, 98, keep_aspect_ratio=True, ensure_multiple_of=14))
    square = Warmed(PreprocessSpec(96, 96))
    from pipeline.config import parse_source

    cfg = load_config(None, {"sources": [parse_source(str(land)), parse_source(str(port))],
                             "sinks": [f"dir:{tmp_path / 'out'}"]})
    p = Pipeline(cfg, {"depth": keep, "segmentation": square}, [], Metrics())  # type: ignore[dict-item]
    p._warm_shapes()
    assert keep.shapes == [(98, 168), (168, 98)]  # one network shape per source resolution, before frames flow
    assert square.shapes == []  # a fixed-shape engine warms its one shape when it is created
