"""Reading back what the Redis sink wrote: one ``{prefix}:stream:{id}:frames`` entry checked field by field, so a
reader (``show``, ``snapshot``) says which field of which entry is unreadable instead of failing on the first
``KeyError``."""

from __future__ import annotations

import json
from typing import Any


class EntryError(ValueError):
    """An entry a reader cannot use; the message is ``stream 'x': entry ID is unreadable (WHY)``."""

    def __init__(self, sid: str, entry_id: str, why: str) -> None:
        super().__init__(f"stream {sid!r}: entry {entry_id} is unreadable ({why})")
        self.why = why


def _json(fields: dict[str, bytes], name: str, kind: type) -> Any:
    try:
        v = json.loads(fields[name])
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{name} is not JSON") from None
    if not isinstance(v, kind):
        raise ValueError(f"{name} is not a JSON {'object' if kind is dict else kind.__name__}")
    return v


def _number(fields: dict[str, bytes], name: str, kind: type = float) -> float:
    if name not in fields:
        raise ValueError(f"missing {name}")
    try:
        return float(kind(fields[name]))
    except (ValueError, TypeError, UnicodeDecodeError):
        raise ValueError(f"{name} is not a number") from None


def _png(fields: dict[str, bytes], name: str) -> None:
    from PIL import UnidentifiedImageError

    from pipeline.overlay import open_picture

    try:
        with open_picture(fields[name], name) as im:  # refused over the pixel budget before it is decoded
            if im.format != "PNG":
                raise ValueError(f"{name} is not a PNG")
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise ValueError(f"{name} is not a PNG") from None


def check_entry(sid: str, entry_id: str, raw: dict[Any, bytes], images: bool = False) -> None:
    """Raise :class:`EntryError` naming the first field of ``raw`` (as redis-py returns it, or with ``str``
    names) that does not follow the schema (README.md, "Redis schema"); with ``images`` the pictures are decoded too."""
    fields = {k.decode(errors="replace") if isinstance(k, bytes) else str(k): v for k, v in raw.items()}
    try:
        _number(fields, "frame", int)
        _number(fields, "pts")
        if "latency_ms" in fields:
            _number(fields, "latency_ms")
        if "mask" in fields:
            _number(fields, "mask_w", int)
            _number(fields, "mask_h", int)
            if "classes" not in fields:
                raise ValueError("missing classes")
            classes = _json(fields, "classes", dict)
            if not all(isinstance(v, int | float) for v in classes.values()):
                raise ValueError("classes are not fractions")
            if images:
                _png(fields, "mask")
        if "depth" in fields:
            depth = _json(fields, "depth", dict)
            for k in ("p05", "p50", "p95"):  # null: the model's depth was not finite on this frame (published so)
                if k not in depth or not (depth[k] is None or isinstance(depth[k], int | float)):
                    raise ValueError(f"depth has no number {k}")
            if images and "depth_map" in fields:
                _png(fields, "depth_map")
        if "zones" in fields:
            _json(fields, "zones", dict)
        if images and "thumb" in fields:
            from PIL import UnidentifiedImageError

            from pipeline.overlay import open_picture

            try:
                with open_picture(fields["thumb"], "thumb") as im:
                    im.load()
            except (UnidentifiedImageError, OSError, SyntaxError):
                raise ValueError("thumb is not an image") from None
        if "mask" not in fields and "depth" not in fields:
            raise ValueError("neither mask nor depth")
    except ValueError as e:
        raise EntryError(sid, entry_id, str(e)) from None


def meta_labels(raw: bytes | None) -> dict[str, str]:
    """``{prefix}:meta`` field ``labels`` as ``{class id: name}``; ValueError when it is not a JSON object."""
    if raw is None:
        return {}
    try:
        labels = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("labels are not JSON") from None
    if not isinstance(labels, dict):
        raise ValueError("labels are not a JSON object")
    return {str(k): str(v) for k, v in labels.items()}
