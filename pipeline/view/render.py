"""One entry -> one JPEG: ``snapshot``'s picture (pipeline.overlay.render_entry), plus zone outlines.

Zones are drawn over the left (mask) half, scaled from the polygon's frame fractions; a zone with an active
rule is red. Until issue 13 teaches ``render_entry`` to draw zones itself, this is the only place that does;
when it does, pass the zones to it here instead, so that ``snapshot`` and the view stay one rendering.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from pipeline.overlay import render_entry
from pipeline.view.stats import Zone

ZONE_COLOUR = (255, 255, 255)
ACTIVE_COLOUR = (255, 0, 0)
JPEG_QUALITY = 85


def left_half_width(fields: dict[str, bytes], picture: np.ndarray) -> int:
    """Width of the frame/mask half of ``render_entry``'s picture (it has one or two halves of equal size)."""
    halves = int("mask" in fields or "thumb" in fields) + int("depth" in fields)
    return int(picture.shape[1]) // max(1, halves)


def draw_zones(picture: np.ndarray, width: int, zones: list[Zone], active: set[str]) -> np.ndarray:
    """Outline each zone over the left ``width`` pixels of ``picture`` (red when in ``active``), named."""
    if not zones:
        return picture
    h = int(picture.shape[0])
    im = Image.fromarray(picture)
    d = ImageDraw.Draw(im)
    for z in sorted(zones, key=lambda z: z.name in active):  # active ones on top
        colour = ACTIVE_COLOUR if z.name in active else ZONE_COLOUR
        pts = [(min(max(x, 0.0), 1.0) * (width - 1), min(max(y, 0.0), 1.0) * (h - 1)) for x, y in z.polygon]
        d.line([*pts, pts[0]], fill=colour, width=3, joint="curve")
        x0, y0 = min(p[0] for p in pts), min(p[1] for p in pts)
        tx, ty = min(x0 + 4, max(width - 60, 0)), min(y0 + 4, max(h - 14, 0))
        d.text((tx, ty), z.name, fill=colour)
    return np.asarray(im)


def render_tile(fields: dict[str, bytes], labels: dict[int, str], zones: list[Zone] | None = None,
                active_zones: set[str] | None = None, quality: int = JPEG_QUALITY) -> tuple[bytes, tuple[int, int]]:
    """The JPEG of one entry (and its width, height): exactly ``snapshot``'s picture, then the zones."""
    picture = render_entry(fields, labels)
    if zones:
        picture = draw_zones(picture, left_half_width(fields, picture), zones, active_zones or set())
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="JPEG", quality=quality, subsampling=0)  # 4:4:4: exact class hues
    return buf.getvalue(), (int(picture.shape[1]), int(picture.shape[0]))
