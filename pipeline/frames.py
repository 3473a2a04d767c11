"""Frozen dataclasses that flow between stages. Every item carries its source identity."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

STREAM_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")  # whole-string match only: "$" would allow a final "\n"


STREAM_ID_RULE = "use 1-64 of A-Z a-z 0-9 . _ -"  # the way out, in every line refusing an id


def valid_stream_id(sid: str) -> bool:
    return bool(STREAM_ID_RE.fullmatch(sid)) and sid not in (".", "..")


MAX_UINT8_CLASSES = 256  # class ids 0..255 fit an 8-bit mask; more labels need a 16-bit one
MAX_CLASSES = 65536


def mask_dtype_for(num_classes: int) -> str:
    """``uint8`` for up to 256 classes, else ``uint16`` (published as 16-bit PNGs; ``{prefix}:meta`` says which)."""
    if num_classes > MAX_CLASSES:
        raise ValueError(f"{num_classes} classes do not fit a 16-bit mask (at most {MAX_CLASSES})")
    return "uint8" if num_classes <= MAX_UINT8_CLASSES else "uint16"


@dataclass(frozen=True)
class FrameId:
    """Identity of a decoded frame: enough to trace every published record to its source frame."""

    stream_id: str
    index: int  # 0-based decode order
    pts: float  # seconds, from the container
    wall_time: float  # unix seconds when decoded
    width: int
    height: int


@dataclass(frozen=True)
class Frame:
    id: FrameId
    image: np.ndarray  # H x W x 3 uint8 RGB


@dataclass(frozen=True)
class Prepared:
    """A frame after preprocessing: one network input per task (``1 x 3 x h x w``), keyed by task."""

    id: FrameId
    inputs: dict[str, Any]  # task -> torch.Tensor
    image: np.ndarray | None = None  # kept only when a sink needs the picture (overlay video)
    tasks: tuple[str, ...] = ()  # tasks to run (degradation may skip some)
    event: Any = None  # CUDA event recorded after preprocessing on the preprocess stream (None on CPU)


@dataclass(frozen=True)
class Batch:
    ids: tuple[FrameId, ...]
    items: tuple[Prepared, ...]


@dataclass(frozen=True)
class Inferred:
    """Raw engine outputs for one frame (on the engine's device)."""

    id: FrameId
    outputs: dict[str, Any]  # "logits": C x h x w, "depth": h x w
    image: np.ndarray | None = None
    infer_done: float = 0.0
    event: Any = None  # CUDA event recorded after inference on the infer stream (None on CPU)


@dataclass(frozen=True)
class Result:
    """What a sink publishes for one frame."""

    id: FrameId
    mask: np.ndarray | None  # mask_h x mask_w class ids: uint8, or uint16 for more than 256 classes
    classes: dict[int, float] = field(default_factory=dict)  # class id -> pixel fraction
    depth: dict[str, Any] | None = None  # summary, see postprocess.depth_summary
    depth_map: np.ndarray | None = None  # mask-sized float32, kept only for visual sinks
    image: np.ndarray | None = None
    zones: dict[str, Any] | None = None  # zone -> {"coverage": {class_id: fraction}, "depth": {median, nearest}}
    alerts: tuple[dict[str, Any], ...] = ()  # rule start/end events this frame caused
    rule_state: str | None = None  # the stream's rule debounce state after this frame (JSON), stored with it
    active_zones: frozenset[str] = frozenset()  # zones with an active rule after this frame


@dataclass(frozen=True)
class EndOfStream:
    """Marker sent by a source when it is finished (for good, or after an error)."""

    stream_id: str
    frames: int  # frames decoded in total
    error: str | None = None
    truncated: bool = False
    bad_packets: int = 0  # packets skipped because they could not be decoded (each may have held a frame)
    alerts: tuple[dict[str, Any], ...] = ()  # rules ended by the stream's end (added by postprocess)
    rule_state: str | None = None  # the rule state after those ends (JSON)


@dataclass(frozen=True)
class Shutdown:
    """Marker that flows through every queue when all sources are finished: stages forward it and exit."""
