"""pipeline/view/render.py: the view's picture is snapshot's (render_entry), plus zone outlines."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from pipeline.overlay import render_entry
from pipeline.view.render import ACTIVE_COLOUR, ZONE_COLOUR, draw_zones, left_half_width, render_tile
from pipeline.view.stats import Zone


def entry() -> dict[str, bytes]:
    mask = np.zeros((54, 96), np.uint8)
    mask[:, 48:] = 7
    buf = io.BytesIO()
    Image.fromarray(mask, mode="L").save(buf, format="PNG")
    depth = {"kind": "relative_inverse", "min": 0.0, "max": 10.0, "mean": 5, "p05": 1, "p50": 5, "p95": 9,
             "grid": [[1, 2], [3, 4]], "per_class": {"0": 2.0, "7": 9.0}}
    return {"frame": b"3", "mask": buf.getvalue(), "classes": json.dumps({"0": 0.5, "7": 0.5}).encode(),
            "depth": json.dumps(depth).encode()}


def decode(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)


def test_without_zones_it_is_snapshots_picture() -> None:
    jpeg, size = render_tile(entry(), {0: "wall", 7: "bed"})
    expected = render_entry(entry(), {0: "wall", 7: "bed"}).astype(int)
    got = decode(jpeg)
    assert size == (960, 270) and got.shape == expected.shape
    assert np.abs(got - expected).mean() < 2


def test_zone_outlines_white_and_red_when_active_on_the_mask_half_only() -> None:
    f = entry()
    pic = render_entry(f, {})
    half = left_half_width(f, pic)
    assert half == 480
    zone = Zone("door", None, ((0.25, 0.25), (0.75, 0.25), (0.75, 0.75), (0.25, 0.75)))
    out = draw_zones(pic, half, [zone], set())
    y = round(0.5 * 269)
    x = round(0.25 * 479)
    assert tuple(out[y, x]) == ZONE_COLOUR and tuple(pic[y, x]) != ZONE_COLOUR
    assert (out[:, half:] == pic[:, half:]).all()  # the depth half is untouched
    red = draw_zones(pic, half, [zone], {"door"})
    assert tuple(red[y, x]) == ACTIVE_COLOUR
    assert draw_zones(pic, half, [], {"door"}) is pic
