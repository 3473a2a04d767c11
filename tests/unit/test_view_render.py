"""pipeline/view/render.py: the view's picture is snapshot's (render_entry), zone outlines included."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipeline.overlay import ACTIVE_COLOUR, ZONE_COLOUR, render_entry
from pipeline.view.render import render_tile, zone_drawings
from pipeline.view.stats import Zone
from tests.support.entries import png_claiming, split_mask_entry


def entry() -> dict[str, bytes]:
    depth = {"kind": "relative_inverse", "min": 0.0, "max": 10.0, "mean": 5, "p05": 1, "p50": 5, "p95": 9,
             "grid": [[1, 2], [3, 4]], "per_class": {"0": 2.0, "7": 9.0}}
    return split_mask_entry(54, 96, 7, depth, frame=b"3")


def decode(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)


def test_without_zones_it_is_snapshots_picture() -> None:
    jpeg, size = render_tile(entry(), {0: "wall", 7: "bed"})
    expected = render_entry(entry(), {0: "wall", 7: "bed"}).astype(int)
    got = decode(jpeg)
    assert size == (960, 270) and got.shape == expected.shape
    assert np.abs(got - expected).mean() < 2


def test_zone_outlines_are_snapshots_own_and_red_when_active() -> None:
    f = entry()
    zone = Zone("door", None, ((0.25, 0.25), (0.75, 0.25), (0.75, 0.75), (0.25, 0.75)))
    plain = render_entry(f, {})
    half = plain.shape[1] // 2
    y, x = round(0.5 * 270), round(0.25 * half)  # on the zone's left edge
    for active, colour in ((set(), ZONE_COLOUR), ({"door"}, ACTIVE_COLOUR)):
        expected = render_entry(f, {}, zones=[("door", zone.polygon, bool(active))])
        jpeg, _ = render_tile(f, {}, [zone], active)
        got = decode(jpeg)
        outline = np.abs(expected.astype(int) - plain.astype(int)).sum(axis=-1) > 0  # what the zone drew
        assert outline.sum() > 500
        assert np.abs(got[outline] - expected[outline].astype(int)).mean() < 6  # the view's pixels are snapshot's
        for px in (got[y, x], got[y, half + x]):  # on both halves, as snapshot and the video draw it
            assert np.abs(px - np.array(colour)).max() < 40, (px, colour)
        assert tuple(plain[y, x]) != colour


def test_zone_drawings_mark_only_the_active_zones() -> None:
    door = Zone("door", None, ((0.1, 0.1), (0.5, 0.1), (0.5, 0.5)))
    bay = Zone("bay", ("a",), ((0.6, 0.6), (0.9, 0.6), (0.9, 0.9)))
    assert zone_drawings([door, bay], {"bay"}) == [("door", door.polygon, False), ("bay", bay.polygon, True)]
    assert zone_drawings([], {"bay"}) == []


def test_the_largest_legal_mask_renders_small_and_a_larger_picture_is_refused() -> None:
    import pytest

    from pipeline.sinks.entries import EntryError, check_entry

    depth = {"kind": "relative_inverse", "min": 0.0, "max": 5.0, "p05": 1.0, "p50": 2.0, "p95": 3.0,
             "per_class": {"0": 1.0, "7": 3.0}}
    big = split_mask_entry(8192, 8192, 7, depth, frame=b"1", pts=b"0", mask_w=b"8192", mask_h=b"8192")
    picture = render_entry(big, {})
    assert picture.shape == (1920, 3840, 3)  # each half at most 1920 on its long side, whatever the mask
    assert (picture[1900, 100] != picture[1900, 1800]).any()  # both class regions are there
    huge = {**big, "mask": png_claiming(12000, 12000), "mask_w": b"12000", "mask_h": b"12000"}
    with pytest.raises(ValueError, match="mask is 12000x12000, over 67 Mpx"):
        render_entry(huge, {})
    with pytest.raises(EntryError, match="over 67 Mpx"):
        check_entry("a", "1-0", huge, images=True)
