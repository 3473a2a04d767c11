"""Pure helpers of the live view: rates from the last entries, the tile's state, zones and active alerts.

Nothing here talks to Redis or the network: the hub (pipeline/view/hub.py) feeds these with what it read.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import Any

from pipeline.frames import valid_stream_id


def entry_ms(entry_id: bytes | str) -> int:
    """Milliseconds part of a Redis stream entry id (``1700000000123-0``): Redis's clock when it was added."""
    s = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(s.split("-", 1)[0])


def entry_key(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id as a sortable pair."""
    s = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = s.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class Sample:
    """What the rate window keeps of one entry."""

    published_ms: int  # from the entry id (Redis's clock)
    frame: int
    latency_ms: float | None


class RateWindow:
    """The last entries of one stream (consecutive ones only): published fps and mean decode->publish latency
    over the newest ``window_s`` seconds."""

    def __init__(self, window_s: float = 5.0, maxlen: int = 256) -> None:
        self.window_ms = int(window_s * 1000)
        self._samples: deque[Sample] = deque(maxlen=maxlen)

    def reset(self) -> None:
        self._samples.clear()

    def add(self, samples: list[Sample]) -> None:
        """Append ``samples`` (oldest first), all newer than what the window holds."""
        self._samples.extend(samples)
        if self._samples:
            newest = self._samples[-1].published_ms
            while self._samples and newest - self._samples[0].published_ms > self.window_ms:
                self._samples.popleft()

    def __len__(self) -> int:
        return len(self._samples)

    def fps(self) -> float | None:
        """Entries per second between the oldest and newest entry of the window (None with fewer than two)."""
        if len(self._samples) < 2:
            return None
        span = (self._samples[-1].published_ms - self._samples[0].published_ms) / 1000.0
        if span <= 0:
            return None
        return (len(self._samples) - 1) / span

    def latency_ms(self) -> float | None:
        vals = [s.latency_ms for s in self._samples if s.latency_ms is not None]
        return sum(vals) / len(vals) if vals else None


def tile_state(age_s: float | None, stale_after_s: float, redis_ok: bool) -> str:
    """``unreachable`` (Redis down), ``waiting`` (no entry seen yet), ``stale`` (no new entry for
    ``stale_after_s``) or ``fresh``."""
    if not redis_ok:
        return "unreachable"
    if age_s is None:
        return "waiting"
    return "stale" if age_s > stale_after_s else "fresh"


def parse_classes(raw: bytes | str | None) -> dict[int, float]:
    """An entry's ``classes`` JSON (``{class_id: fraction}``); anything unreadable is no classes."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
        return {int(k): float(v) for k, v in data.items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def parse_labels(raw: bytes | str | None) -> dict[int, str]:
    """``{prefix}:meta`` field ``labels`` (``{id: name}``)."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
        return {int(k): str(v) for k, v in data.items()}
    except (ValueError, TypeError, AttributeError):
        return {}


@dataclass(frozen=True)
class Zone:
    """One zone of ``{prefix}:meta`` field ``zones`` (README.md, "Redis schema")."""

    name: str
    streams: tuple[str, ...] | None  # None: every stream
    polygon: tuple[tuple[float, float], ...]  # x, y as fractions of the frame

    def applies_to(self, sid: str) -> bool:
        return self.streams is None or sid in self.streams


def parse_zones(raw: bytes | str | None) -> list[Zone]:
    """Zones from ``{prefix}:meta`` ``zones``; malformed zones are skipped (the pipeline validated them)."""
    if not raw:
        return []
    try:
        data = json.loads(raw)
    except ValueError:
        return []
    out: list[Zone] = []
    for z in data if isinstance(data, list) else []:
        try:
            name = str(z["name"])
            streams = z.get("streams")
            poly = tuple((float(p[0]), float(p[1])) for p in z["polygon"])
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            continue
        if len(poly) < 3:
            continue
        out.append(Zone(name, None if streams is None else tuple(str(s) for s in streams), poly))
    return out


def parse_active_alerts(raw: dict[bytes, bytes] | dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """``{prefix}:alerts:active`` (field ``{stream}/{rule}`` -> JSON of the start event) -> per stream the
    active alerts, sorted by rule name."""
    out: dict[str, list[dict[str, Any]]] = {}
    for k, v in raw.items():
        field = k.decode() if isinstance(k, bytes) else k
        sid, sep, rule = field.partition("/")
        if not sep or not valid_stream_id(sid) or not rule:
            continue
        try:
            event = json.loads(v)
        except ValueError:
            event = {}
        if not isinstance(event, dict):
            event = {}
        alert: dict[str, Any] = {"rule": str(event.get("rule", rule)), "zone": event.get("zone")}
        for key in ("frame", "ts", "coverage", "distance"):
            if event.get(key) is not None:
                alert[key] = event[key]
        out.setdefault(sid, []).append(alert)
    for alerts in out.values():
        alerts.sort(key=lambda a: a["rule"])
    return out


def active_zones(alerts: list[dict[str, Any]]) -> set[str]:
    """The zones with an active rule, from one stream's :func:`parse_active_alerts` list."""
    return {str(a["zone"]) for a in alerts if a.get("zone")}


def top_classes(classes: dict[int, float], labels: dict[int, str], colours: Any, n: int | None = None
                ) -> list[dict[str, Any]]:
    """Classes by coverage (largest first) with their names and palette colours (``#rrggbb``)."""
    items = sorted(classes.items(), key=lambda kv: (-kv[1], kv[0]))
    if n is not None:
        items = items[:n]
    out = []
    for c, frac in items:
        r, g, b = (int(v) for v in colours[c % len(colours)])
        out.append({"id": c, "name": labels.get(c, str(c)), "coverage": round(frac, 4),
                    "color": f"#{r:02x}{g:02x}{b:02x}"})
    return out
