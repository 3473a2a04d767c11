"""Pictures of what the pipeline sees: the ``video:PATH`` sink and the ``snapshot`` renderer.

``video:PATH`` writes an H.264 MP4 per stream (PyAV): on the left the frame with the class mask blended over
it (and the largest classes named), on the right the depth map as a colour image (turbo colour map; warm =
near for relative inverse depth). ``PATH`` ending in ``.mp4``/``.mkv``/``.mov`` is that one file (one stream
only); otherwise it is a directory and each stream goes to ``PATH/{stream}.mp4``. A file is written as
``*.part.mp4`` and renamed when its stream ends, so a finished name is always a complete video.
"""

from __future__ import annotations

import colorsys
import io
import json
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.frames import Result

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov")
MAX_PANEL_SIDE = 960  # long side of each half of the video (the source is scaled down to it)
ALPHA = 0.5  # mask opacity over the frame
MAX_RENDER_SIDE = 1920  # long side of each half of render_entry's picture (snapshot, the view's tiles)
MAX_PICTURE_PIXELS = 8192 * 8192  # the largest legal mask (--mask-size 8192x8192); a larger picture is refused


def class_palette(n: int = 256) -> np.ndarray:
    """``n x 3`` uint8 colours, well separated (golden-ratio hues); the same in the video and snapshots."""
    out = np.zeros((n, 3), np.uint8)
    for c in range(n):
        h = (c * 0.618033988749895) % 1.0
        s = 0.55 + 0.4 * ((c * 7) % 5) / 4
        v = 0.95 - 0.25 * ((c * 3) % 4) / 3
        out[c] = [round(255 * x) for x in colorsys.hsv_to_rgb(h, s, v)]
    return out


def _turbo_lut() -> np.ndarray:
    """The turbo colour map (polynomial fit by its author, Google AI, 2019) as a 256 x 3 uint8 table."""
    x = np.linspace(0.0, 1.0, 256)
    r = 0.13572138 + x * (4.61539260 + x * (-42.66032258 + x * (132.13108234 + x * (-152.94239396 + x * 59.28637943))))
    g = 0.09140261 + x * (2.19418839 + x * (4.84296658 + x * (-14.18503333 + x * (4.27729857 + x * 2.82956604))))
    b = 0.10667330 + x * (12.64194608 + x * (-60.58204836 + x * (110.36276771 + x * (-89.90310912 + x * 27.34824973))))
    return (np.clip(np.stack([r, g, b], axis=1), 0, 1) * 255).round().astype(np.uint8)


PALETTE = class_palette()


def class_colours(mask: np.ndarray) -> np.ndarray:
    """``H x W x 3`` colours of a class-id mask; a 16-bit mask (> 256 classes) reuses the palette's colours."""
    return PALETTE[mask] if mask.dtype == np.uint8 else PALETTE[mask.astype(np.int64) % len(PALETTE)]
TURBO = _turbo_lut()


def colorize_depth(depth: np.ndarray, lo: float | None = None, hi: float | None = None,
                   near_is_large: bool = True) -> np.ndarray:
    """``H x W`` depth -> ``H x W x 3`` uint8 (turbo; red = near). Scaled between the 2nd/98th percentiles
    unless ``lo``/``hi`` are given."""
    d = np.asarray(depth, dtype=np.float32)
    if lo is None or hi is None:
        lo, hi = (float(v) for v in np.percentile(d, [2, 98]))
    t = (d - lo) / (hi - lo) if hi > lo else np.zeros_like(d)
    if not near_is_large:
        t = 1.0 - t
    idx = np.clip(t * 255.0, 0, 255).astype(np.uint8)
    return TURBO[idx]  # type: ignore[no-any-return]


def blend_mask(image: np.ndarray | None, mask: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """Class colours of ``mask`` blended over ``image`` (same H x W), or the colours alone without an image."""
    colours = class_colours(mask)
    if image is None:
        return colours  # type: ignore[no-any-return]
    out = image.astype(np.float32) * (1.0 - alpha) + colours.astype(np.float32) * alpha
    return out.round().astype(np.uint8)  # type: ignore[no-any-return]


def _font() -> Any:
    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_legend(panel: np.ndarray, classes: dict[int, float], labels: dict[int, str], top: int = 4) -> np.ndarray:
    """Name the ``top`` largest classes in the panel's corner, each with its colour swatch."""
    items = sorted(classes.items(), key=lambda kv: -kv[1])[:top]
    if not items or panel.shape[0] < 60 or panel.shape[1] < 120:
        return panel
    im = Image.fromarray(panel)
    d = ImageDraw.Draw(im)
    font = _font()
    y = 4
    for c, frac in items:
        name = labels.get(int(c), str(c))
        text = f"{name} {frac:.0%}"
        w = int(d.textlength(text, font=font))
        d.rectangle((4, y, 4 + 14 + w + 6, y + 14), fill=(0, 0, 0))
        d.rectangle((6, y + 2, 16, y + 12), fill=tuple(int(v) for v in PALETTE[int(c) % len(PALETTE)]))
        d.text((20, y + 1), text, fill=(255, 255, 255), font=font)
        y += 16
    return np.asarray(im)


def caption(panel: np.ndarray, text: str) -> np.ndarray:
    im = Image.fromarray(panel)
    d = ImageDraw.Draw(im)
    font = _font()
    w = int(d.textlength(text, font=font))
    h = panel.shape[0]
    d.rectangle((4, h - 18, 4 + w + 6, h - 3), fill=(0, 0, 0))
    d.text((7, h - 17), text, fill=(255, 255, 255), font=font)
    return np.asarray(im)


def _resize(a: np.ndarray, size_wh: tuple[int, int], nearest: bool = False) -> np.ndarray:
    if (a.shape[1], a.shape[0]) == size_wh:
        return a
    res = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    if a.dtype == np.float32:
        return np.asarray(Image.fromarray(a, mode="F").resize(size_wh, res))
    return np.asarray(Image.fromarray(a).resize(size_wh, res))


def panel_size(width: int, height: int, max_side: int = MAX_PANEL_SIDE) -> tuple[int, int]:
    """Source size scaled down so the long side is at most ``max_side``; even (H.264 with 4:2:0)."""
    s = min(1.0, max_side / max(width, height))
    return max(2, round(width * s / 2) * 2), max(2, round(height * s / 2) * 2)


ZONE_COLOUR = (255, 214, 0)  # a zone's outline
ACTIVE_COLOUR = (255, 0, 0)  # ... while one of its rules is active

# A zone to draw: its name, its polygon (fractions of the frame) and whether a rule on it is active.
ZoneDrawing = tuple[str, Sequence[Sequence[float]], bool]


def draw_zones(panel: np.ndarray, zones: Sequence[ZoneDrawing]) -> np.ndarray:
    """Outline each zone (polygon in fractions of the panel) and name it; red while one of its rules is active."""
    if not zones:
        return panel
    im = Image.fromarray(np.ascontiguousarray(panel))
    d = ImageDraw.Draw(im)
    h, w = panel.shape[:2]
    font = _font()
    width = max(2, round(min(w, h) / 160))
    for name, polygon, active in zones:
        pts = [(float(x) * w, float(y) * h) for x, y in polygon]
        colour = ACTIVE_COLOUR if active else ZONE_COLOUR
        d.line([*pts, pts[0]], fill=colour, width=width, joint="curve")
        x0, y0 = min(p[0] for p in pts), min(p[1] for p in pts)
        tx, ty = min(max(x0 + width + 1, 0), max(w - 40, 0)), min(max(y0 + width + 1, 0), max(h - 14, 0))
        d.text((tx, ty), name, fill=colour, font=font)
    return np.asarray(im)


def compose(r: Result, labels: dict[int, str], show_mask: bool, show_depth: bool,
            size_wh: tuple[int, int], zones: Sequence[ZoneDrawing] = ()) -> np.ndarray:
    """One video frame for result ``r``: [frame + mask | depth colours], each half ``size_wh``, with the
    ``zones`` outlined on every half."""
    w, h = size_wh
    base = _resize(r.image, size_wh) if r.image is not None else None
    halves: list[np.ndarray] = []
    left = base if base is not None else np.zeros((h, w, 3), np.uint8)
    if show_mask:
        if r.mask is not None:
            left = blend_mask(base, _resize(r.mask, size_wh, nearest=True))
            left = draw_legend(left, r.classes, labels)
        halves.append(np.ascontiguousarray(left))
    elif base is not None:
        halves.append(base)
    if show_depth:
        if r.depth_map is not None:
            near_large = (r.depth or {}).get("kind", "relative_inverse") == "relative_inverse"
            colours = colorize_depth(r.depth_map, near_is_large=near_large)
            halves.append(_resize(colours, size_wh))
        else:  # a frame whose depth was skipped (live degradation): a black half keeps the layout
            halves.append(np.zeros((h, w, 3), np.uint8))
    halves = [draw_zones(half, zones) for half in halves]
    return np.ascontiguousarray(np.concatenate(halves, axis=1))


# --------------------------------------------------------------------------------------------------------
# snapshot: one Redis entry -> PNG

def depth_units(kind: str) -> str:
    """How to read a depth summary's values, for labels: metres, or relative inverse depth."""
    return "metres" if kind == "metric" else "relative inverse depth, larger = nearer"


def render_size(width: int, height: int, min_side: int = 480, max_side: int = MAX_RENDER_SIDE) -> tuple[int, int]:
    """The size of each half of :func:`render_entry`'s picture for a ``width`` x ``height`` mask: scaled up so the
    long side is at least ``min_side``, down so it is at most ``max_side``."""
    s = max(1.0, min_side / max(width, height))
    s = min(s, max_side / max(width, height))
    return max(1, round(width * s)), max(1, round(height * s))


def open_picture(data: bytes, name: str) -> Image.Image:
    """An entry's picture (PNG or JPEG) opened, its header read but nothing decoded; a picture of more pixels than
    :data:`MAX_PICTURE_PIXELS` (the largest legal mask, 8192x8192) is refused (ValueError, one line)."""
    with warnings.catch_warnings():  # the size is checked here, in our words
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise ValueError(f"{name} is over {MAX_PICTURE_PIXELS // 10**6} Mpx, the most a picture may have "
                             "(8192x8192): not drawn") from None
    w, h = im.size
    if w * h > MAX_PICTURE_PIXELS:
        raise ValueError(f"{name} is {w}x{h}, over {MAX_PICTURE_PIXELS // 10**6} Mpx, the most a picture may "
                         "have (8192x8192): not drawn")
    return im


def _decimated(a: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Every k-th row and column of ``a`` when it is at least twice ``size_wh`` (cheap before a resize)."""
    k = min(a.shape[1] // size_wh[0], a.shape[0] // size_wh[1])
    return a[::k, ::k] if k >= 2 else a


def render_entry(fields: dict[str, bytes], labels: dict[int, str], min_side: int = 480,
                 zones: Sequence[ZoneDrawing] = (), max_side: int | None = None) -> np.ndarray:
    """Picture of one Redis entry (with ``zones`` outlined, red where a rule is active). Redis holds the mask
    (PNG) and a depth *summary*, not the frame and not the
    depth map, so: left = the mask's class colours, blended over the frame's JPEG thumbnail when the entry has
    one (``redis.thumbnail``); right = depth from the summary, each class region painted with its median depth
    (``per_class``), or the coarse near-field ``grid`` when there is no mask. Each half is at most ``max_side``
    (:data:`MAX_RENDER_SIDE`) on its long side, so the largest legal mask costs what a 1080p one does."""
    max_side = max_side or MAX_RENDER_SIDE
    mask_im = open_picture(fields["mask"], "mask") if "mask" in fields else None
    depth = json.loads(fields["depth"]) if "depth" in fields else None
    if mask_im is not None:
        mw, mh = mask_im.size
    elif depth is not None:
        mw, mh = 480, 270
    else:
        raise ValueError("the entry has neither a mask nor depth")
    size = render_size(mw, mh, min_side, max_side)
    # the mask is decoded once and scaled at once (nearest: class ids stay ids); nothing at its full size is kept
    mask = np.asarray(mask_im.resize(size, Image.Resampling.NEAREST)) if mask_im is not None else None
    thumb = None
    if "thumb" in fields:
        thumb_im = open_picture(fields["thumb"], "thumb")
        thumb_im.draft("RGB", size)  # a JPEG decodes at 1/2, 1/4 or 1/8 scale when that still covers the panel
        thumb = _resize(np.asarray(thumb_im.convert("RGB")), size)
    halves = []
    if mask is not None:
        classes = {int(k): float(v) for k, v in json.loads(fields.get("classes", b"{}")).items()}
        left = blend_mask(thumb, mask) if thumb is not None else class_colours(mask)
        left = draw_legend(np.ascontiguousarray(left), classes, labels)
        halves.append(caption(left, "classes over frame thumbnail" if thumb is not None else "classes (mask)"))
    elif thumb is not None:
        halves.append(thumb)
    if depth is not None and (depth.get("min") is None or depth.get("max") is None):
        # the model's depth was not finite on this frame (published as null): say so, draw no made-up picture
        blank = np.full((size[1], size[0], 3), 64, np.uint8)
        halves.append(caption(blank, "depth: not finite on this frame"))
    elif depth is not None:
        kind = str(depth.get("kind", "relative_inverse"))
        near_large = kind == "relative_inverse"
        lo, hi = float(depth["min"]), float(depth["max"])
        per_class = depth.get("per_class")
        units = depth_units(kind)
        if "depth_map" in fields:  # the full map (redis.depth_map): decoded back to depth values
            raw = _decimated(np.asarray(open_picture(fields["depth_map"], "depth_map")), size)
            raw = raw.astype(np.float32)
            full = raw / 1000.0 if kind == "metric" else lo + raw / 65535.0 * (hi - lo)
            dm = np.asarray(Image.fromarray(full, mode="F").resize(size, Image.Resampling.BILINEAR))
            text = f"depth map, {units}"
        elif mask is not None and per_class:
            lut = np.full(max(256, int(mask.max()) + 1), np.nan, np.float32)
            for c, v in per_class.items():
                lut[int(c)] = float(v["median"] if isinstance(v, dict) else v)
            dm = lut[mask]
            dm = np.where(np.isnan(dm), lo, dm)
            text = f"depth: median per class region, {units}"
        else:
            grid = np.asarray(depth["grid"], np.float32)
            dm = np.asarray(Image.fromarray(grid, mode="F").resize(size, Image.Resampling.NEAREST))
            text = f"depth: {grid.shape[0]}x{grid.shape[1]} near-field grid, {units}"
        if kind == "metric":
            text += f" ({lo:.2f}-{hi:.2f} m)"
        halves.append(caption(colorize_depth(dm, lo, hi, near_is_large=near_large), text))
    halves = [draw_zones(half, zones) for half in halves]
    return np.ascontiguousarray(np.concatenate(halves, axis=1))
