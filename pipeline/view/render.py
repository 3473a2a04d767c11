"""One entry -> one JPEG: exactly ``snapshot``'s picture (pipeline.overlay.render_entry), zones included.

The zones are drawn by ``render_entry`` itself (pipeline.overlay.draw_zones, the same code the ``video:`` sink
and ``snapshot`` use), so the view and ``snapshot`` stay one rendering.
"""

from __future__ import annotations

import io

from PIL import Image

from pipeline.overlay import ZoneDrawing, render_entry
from pipeline.view.stats import Zone

JPEG_QUALITY = 85


def zone_drawings(zones: list[Zone], active: set[str]) -> list[ZoneDrawing]:
    """The view's zones as ``render_entry`` draws them: name, polygon, and whether a rule on it is active."""
    return [(z.name, z.polygon, z.name in active) for z in zones]


def render_tile(fields: dict[str, bytes], labels: dict[int, str], zones: list[Zone] | None = None,
                active_zones: set[str] | None = None, quality: int = JPEG_QUALITY) -> tuple[bytes, tuple[int, int]]:
    """The JPEG of one entry (and its width, height): exactly ``snapshot``'s picture, zones included."""
    picture = render_entry(fields, labels, zones=zone_drawings(zones or [], active_zones or set()))
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="JPEG", quality=quality, subsampling=0)  # 4:4:4: exact class hues
    return buf.getvalue(), (int(picture.shape[1]), int(picture.shape[0]))
