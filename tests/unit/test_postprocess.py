"""Postprocess math: mask sizes, logits resize + argmax, depth summaries against torch references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.stages.depth import depth_summary
from pipeline.stages.masks import class_fractions, mask_size, segment


def test_mask_size_rules() -> None:
    assert mask_size("default", 1280, 720, 480) == (480, 270)
    assert mask_size("default", 720, 1280, 480) == (270, 480)
    assert mask_size("network", 1280, 720, 480) == (480, 480)
    assert mask_size("source", 1280, 720, 480) == (1280, 720)
    assert mask_size("320x200", 1280, 720, 480) == (320, 200)


def test_segment_equals_interpolate_then_argmax_in_both_layouts() -> None:
    torch.manual_seed(0)
    logits = torch.randn(150, 48, 48) * 2.5
    ref = F.interpolate(logits[None], size=(27, 48), mode="bilinear", align_corners=False)[0].argmax(0)
    assert torch.equal(segment(logits, (27, 48)).long(), ref)
    cl = logits[None].contiguous(memory_format=torch.channels_last)[0]
    assert torch.equal(segment(cl, (27, 48)).long(), ref)


def test_depth_summary_matches_torch_reference() -> None:
    torch.manual_seed(1)
    depth = torch.rand(54, 96) * 5
    mask = torch.randint(0, 7, (54, 96), dtype=torch.uint8)
    s = depth_summary(depth, mask, grid=4)
    flat = depth.reshape(-1)
    q = torch.quantile(flat, torch.tensor([0.05, 0.5, 0.95]))
    assert s["kind"] == "relative_inverse"
    assert s["min"] == pytest.approx(float(flat.min()), abs=1e-5)
    assert s["mean"] == pytest.approx(float(flat.mean()), abs=1e-5)
    assert [s["p05"], s["p50"], s["p95"]] == pytest.approx(q.tolist(), abs=1e-5)
    assert s["grid"][1][2] == pytest.approx(float(torch.quantile(depth[13:27, 48:72].reshape(-1), 0.9)), abs=1e-5)
    for c in range(7):
        assert s["per_class"][str(c)] == pytest.approx(float(flat[mask.reshape(-1) == c].median()), abs=1e-6)
    fr = class_fractions(mask, 150)
    assert sum(fr.values()) == pytest.approx(1.0, abs=1e-4) and set(fr) == set(range(7))


def test_zone_stats_match_a_numpy_reference() -> None:
    """Per-zone class counts, lower median and nearest depth (both depth kinds), overlapping zones included."""
    import numpy as np

    from pipeline.stages.zoning import _zone_stats_numpy, _zone_stats_torch, zone_layout, zone_results
    from pipeline.zones import Zone, rasterize

    g = torch.Generator().manual_seed(3)
    h, w, c = 54, 96, 150
    mask = torch.randint(0, 6, (h, w), generator=g, dtype=torch.int64).to(torch.uint8) * 7
    depth = torch.rand((h, w), generator=g) * 10
    zones = [Zone("a", ((0.1, 0.4), (0.45, 0.4), (0.45, 1.0), (0.1, 1.0))),
             Zone("b", ((0.3, 0.0), (1.0, 0.0), (1.0, 0.9))),  # overlaps a
             Zone("tiny", ((0.0, 0.0), (0.001, 0.0), (0.0, 0.001)))]  # contains no pixel centre
    layout = zone_layout(zones, w, h, "cpu")
    flat = depth.reshape(-1).contiguous()
    for fn, metric in ((f, m) for f in (_zone_stats_numpy, _zone_stats_torch) for m in (False, True)):
        zt = fn(layout, mask, flat, c, metric, True)  # numpy on CPU; the torch path is the GPU's
        got = zone_results(layout, zt)
        for z in zones:
            inside = rasterize(z.polygon, w, h)
            m, d = mask.numpy()[inside], depth.numpy()[inside]
            st = got[z.name]
            assert st.area == int(inside.sum())
            if not st.area:
                assert st.counts == {} and st.median is None and st.coverage() == {}
                continue
            ids, n = np.unique(m, return_counts=True)
            assert st.counts == {int(k): int(v) for k, v in zip(ids, n, strict=True)}
            assert st.median == pytest.approx(float(np.sort(d)[(len(d) - 1) // 2]))
            assert st.nearest == pytest.approx(float(d.min() if metric else d.max()))
            for k in ids:
                sel = d[m == k]
                assert st.class_nearest[int(k)] == pytest.approx(float(sel.min() if metric else sel.max()))
            assert sum(st.coverage().values()) == pytest.approx(1.0, abs=1e-4)
