"""Zones and rules (pure logic): polygon checks, rasterisation at the mask size, resolving rules against the
checkpoint's labels, the per-frame rule condition and the frame debounce.

A zone is a polygon in fractions of the frame (``x, y`` in 0..1). It is rasterised once per stream at the mask
size: pixel ``(col, row)`` is inside when its centre ``((col + 0.5) / W, (row + 0.5) / H)`` is (even-odd rule).
A rule holds on a frame when its classes cover at least ``min_coverage`` of its zone (and at least one pixel),
and, with ``max_distance_m``, something of those classes (or anything, without classes) is nearer than that
many metres. It *starts* after ``for_frames`` consecutive frames that hold and *ends* after ``clear_frames``
consecutive ones that do not (or at the stream's end).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RuleError(ValueError):
    """A rule that cannot be resolved against the loaded checkpoints (unknown class, metric depth missing)."""


def valid_name(name: str) -> bool:
    return NAME_RE.fullmatch(name) is not None


# -- polygons -------------------------------------------------------------------------------------------------

def _orient(a: Sequence[float], b: Sequence[float], c: Sequence[float]) -> float:
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def _on_segment(a: Sequence[float], b: Sequence[float], p: Sequence[float]) -> bool:
    return min(a[0], b[0]) <= p[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= p[1] <= max(a[1], b[1])


def segments_intersect(a: Sequence[float], b: Sequence[float], c: Sequence[float], d: Sequence[float]) -> bool:
    """Whether segment ``ab`` and segment ``cd`` share a point (touching counts)."""
    o1, o2, o3, o4 = _orient(a, b, c), _orient(a, b, d), _orient(c, d, a), _orient(c, d, b)
    if ((o1 > 0 > o2) or (o1 < 0 < o2)) and ((o3 > 0 > o4) or (o3 < 0 < o4)):
        return True
    return ((o1 == 0 and _on_segment(a, b, c)) or (o2 == 0 and _on_segment(a, b, d))
            or (o3 == 0 and _on_segment(c, d, a)) or (o4 == 0 and _on_segment(c, d, b)))


def polygon_problem(points: Sequence[Sequence[float]]) -> str | None:
    """What is wrong with a zone polygon (``None`` when it is usable): fewer than 3 points, a coordinate
    outside 0..1, a repeated point, no area, or edges that cross (self-intersecting)."""
    if len(points) < 3:
        return f"needs at least 3 points, got {len(points)}"
    for i, p in enumerate(points):
        if len(p) != 2:
            return f"point {i} must be [x, y], got {list(p)}"
        if not all(0.0 <= float(v) <= 1.0 for v in p):
            return f"point {i} {list(p)} is outside the frame: x and y are fractions 0..1"
    n = len(points)
    for i in range(n):
        if tuple(points[i]) == tuple(points[(i + 1) % n]):
            return f"point {(i + 1) % n} repeats point {i}"
    for i in range(n):
        a, b = points[i], points[(i + 1) % n]
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):  # neighbours share a vertex
                continue
            c, d = points[j], points[(j + 1) % n]
            if segments_intersect(a, b, c, d):
                return f"is self-intersecting (edge {i}-{(i + 1) % n} crosses edge {j}-{(j + 1) % n})"
    area2 = sum(points[i][0] * points[(i + 1) % n][1] - points[(i + 1) % n][0] * points[i][1] for i in range(n))
    if abs(area2) < 1e-12:
        return "has no area (all points on one line)"
    return None


def rasterize(polygon: Sequence[Sequence[float]], width: int, height: int) -> np.ndarray:
    """``height x width`` bool: pixels whose centre lies inside ``polygon`` (fractions of the frame; even-odd)."""
    xs = (np.arange(width, dtype=np.float64) + 0.5) / width
    ys = (np.arange(height, dtype=np.float64) + 0.5) / height
    px, py = xs[None, :], ys[:, None]
    inside = np.zeros((height, width), dtype=bool)
    n = len(polygon)
    for i in range(n):
        x1, y1 = float(polygon[i][0]), float(polygon[i][1])
        x2, y2 = float(polygon[(i + 1) % n][0]), float(polygon[(i + 1) % n][1])
        if y1 == y2:
            continue
        crosses = (y1 > py) != (y2 > py)  # the edge spans this row's centre (half-open: no double count)
        x_at = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (px < x_at)
    return inside


# -- rules ----------------------------------------------------------------------------------------------------

class ZoneLike(Protocol):
    name: str
    streams: list[str] | None
    polygon: list[list[float]]


class RuleLike(Protocol):
    name: str
    zone: str
    classes: list[str | int]
    min_coverage: float
    max_distance_m: float | None
    for_frames: int
    clear_frames: int


@dataclass(frozen=True)
class Zone:
    name: str
    polygon: tuple[tuple[float, float], ...]
    streams: tuple[str, ...] | None = None  # None: every stream

    def applies_to(self, stream_id: str) -> bool:
        return self.streams is None or stream_id in self.streams


@dataclass(frozen=True)
class Rule:
    name: str
    zone: str
    classes: tuple[int, ...] = ()
    min_coverage: float = 0.0
    max_distance_m: float | None = None
    for_frames: int = 1
    clear_frames: int = 1


@dataclass(frozen=True)
class ZonePlan:
    """Zones and rules resolved against the checkpoints, ready for the postprocess stage and the sinks."""

    zones: tuple[Zone, ...] = ()
    rules: tuple[Rule, ...] = ()
    metric: bool = False  # depth is in metres (nearest = lowest value) rather than relative inverse depth

    def __bool__(self) -> bool:
        return bool(self.zones)

    def zones_for(self, stream_id: str) -> tuple[Zone, ...]:
        return tuple(z for z in self.zones if z.applies_to(stream_id))

    def rules_for(self, stream_id: str) -> tuple[Rule, ...]:
        names = {z.name for z in self.zones_for(stream_id)}
        return tuple(r for r in self.rules if r.zone in names)

    def zone(self, name: str) -> Zone:
        return next(z for z in self.zones if z.name == name)

    def meta(self) -> dict[str, str]:
        """``{prefix}:meta`` fields ``zones`` and ``rules`` (JSON)."""
        zones = [{"name": z.name, "streams": list(z.streams) if z.streams is not None else None,
                  "polygon": [list(p) for p in z.polygon]} for z in self.zones]
        rules = [{"name": r.name, "zone": r.zone, "classes": list(r.classes), "min_coverage": r.min_coverage,
                  "max_distance_m": r.max_distance_m, "for_frames": r.for_frames, "clear_frames": r.clear_frames}
                 for r in self.rules]
        return {"zones": json.dumps(zones), "rules": json.dumps(rules)}


def resolve_class(name: str | int, labels: Mapping[int, str], rule: str) -> int:
    """A class given by name or id -> its id in ``labels`` (the segmentation checkpoint's ``id2label``)."""
    if isinstance(name, int) or (isinstance(name, str) and name.isdigit()):
        cid = int(name)
        if labels and cid not in labels:
            raise RuleError(f"rule {rule!r}: class id {cid} is not a label of the segmentation checkpoint "
                            f"(ids 0-{max(labels)})")
        return cid
    exact = [k for k, v in labels.items() if v == name]
    if not exact:
        exact = [k for k, v in labels.items() if v.lower() == name.lower()]
    if exact:
        return min(exact)
    close = difflib.get_close_matches(name, list(labels.values()), n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise RuleError(f"rule {rule!r}: unknown class {name!r}: not a label of the segmentation checkpoint "
                    f"(use a label name or an id){hint}")


def resolve(zones: Sequence[ZoneLike], rules: Sequence[RuleLike], labels: Mapping[int, str],
            metric: bool | None = None, depth_model: str = "") -> ZonePlan:
    """Config zones/rules -> a :class:`ZonePlan`. Class names resolve against ``labels``; ``metric`` (None: not
    checked) says whether the depth checkpoint gives metres, which ``max_distance_m`` needs."""
    zs = tuple(Zone(z.name, tuple((float(p[0]), float(p[1])) for p in z.polygon),
                    tuple(z.streams) if z.streams is not None else None) for z in zones)
    out: list[Rule] = []
    for r in rules:
        if r.max_distance_m is not None and metric is False:
            what = f" {depth_model!r}" if depth_model else ""
            raise RuleError(f"rule {r.name!r}: max_distance_m needs a metric depth checkpoint, but the depth "
                            f"model{what} gives relative inverse depth (drop max_distance_m or use a metric model)")
        classes = tuple(dict.fromkeys(resolve_class(c, labels, r.name) for c in r.classes))
        out.append(Rule(r.name, r.zone, classes, float(r.min_coverage), r.max_distance_m, r.for_frames,
                        r.clear_frames))
    return ZonePlan(zs, tuple(out), bool(metric))


@dataclass(frozen=True)
class ZoneStats:
    """One zone on one frame: pixel area, class pixel counts inside it, and depth (median, nearest)."""

    area: int
    counts: Mapping[int, int] = field(default_factory=dict)  # class id -> pixels inside the zone
    median: float | None = None
    nearest: float | None = None
    class_nearest: Mapping[int, float] = field(default_factory=dict)  # metric depth: nearest per class

    def coverage(self) -> dict[int, float]:
        if self.area <= 0:
            return {}
        return {c: round(n / self.area, 6) for c, n in sorted(self.counts.items()) if n}

    def as_json(self, with_coverage: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if with_coverage:
            out["coverage"] = {str(c): v for c, v in self.coverage().items()}
        if self.median is not None and self.nearest is not None:
            out["depth"] = {"median": round(self.median, 6), "nearest": round(self.nearest, 6)}
        return out


def condition(rule: Rule, stats: ZoneStats | None,
              has_mask: bool) -> tuple[bool | None, float | None, float | None]:
    """``(holds, coverage, distance)`` of ``rule`` on one frame; ``holds`` is None when the frame cannot tell
    (no mask for a class rule, no depth for a distance rule: e.g. a frame whose task was skipped)."""
    if stats is None:
        return None, None, None
    coverage: float | None = None
    distance: float | None = None
    ok = True
    if rule.classes:
        if not has_mask:
            return None, None, None
        n = sum(stats.counts.get(c, 0) for c in rule.classes)
        coverage = n / stats.area if stats.area > 0 else 0.0
        ok = n > 0 and coverage >= rule.min_coverage
    if rule.max_distance_m is not None:
        if rule.classes:
            near = [stats.class_nearest[c] for c in rule.classes if c in stats.class_nearest]
            distance = min(near) if near else None
            if stats.nearest is None:
                return None, coverage, None
        else:
            distance = stats.nearest
            if distance is None:
                return None, None, None
        ok = ok and distance is not None and distance <= rule.max_distance_m
    return ok, coverage, distance


# -- debounce -------------------------------------------------------------------------------------------------

@dataclass
class RuleState:
    active: bool = False
    run: int = 0  # consecutive frames holding (inactive) or failing (active)
    coverage: float | None = None  # the latest frame's values, for an end at the stream's end
    distance: float | None = None


class StreamRules:
    """The debounce of every rule of one stream, and the stream's last evaluated frame.

    Its state (:meth:`dump` / :meth:`load`) is stored in Redis next to the stream's resume point, in the same
    atomic write as each frame, so a resumed run continues the counters exactly where the published frames
    left them. A live camera's reconnect does not touch it (the stream does not end).
    """

    def __init__(self, stream_id: str, rules: Sequence[Rule], state: str | None = None) -> None:
        self.stream_id = stream_id
        self.rules = tuple(rules)
        self.states: dict[str, RuleState] = {r.name: RuleState() for r in self.rules}
        self.frame = -1
        self.ts = 0.0
        if state:
            self.load(state)

    def load(self, state: str) -> None:
        data = json.loads(state)
        self.frame, self.ts = int(data.get("frame", -1)), float(data.get("ts", 0.0))
        for name, v in data.get("rules", {}).items():
            if name in self.states:  # a rule removed from the config since is forgotten
                self.states[name] = RuleState(bool(v[0]), int(v[1]), v[2], v[3])

    def dump(self) -> str:
        return json.dumps({"frame": self.frame, "ts": self.ts,
                           "rules": {n: [s.active, s.run, s.coverage, s.distance] for n, s in self.states.items()}},
                          separators=(",", ":"))

    @property
    def active(self) -> list[Rule]:
        return [r for r in self.rules if self.states[r.name].active]

    def _event(self, rule: Rule, state: str, frame: int, ts: float) -> dict[str, Any]:
        st = self.states[rule.name]
        ev: dict[str, Any] = {"rule": rule.name, "zone": rule.zone, "stream": self.stream_id, "state": state,
                              "frame": frame, "ts": round(ts, 6)}
        if st.coverage is not None:
            ev["coverage"] = round(st.coverage, 6)
        if st.distance is not None:
            ev["distance"] = round(st.distance, 6)
        return ev

    def step(self, frame: int, ts: float, zones: Mapping[str, ZoneStats], has_mask: bool) -> list[dict[str, Any]]:
        """Feed one frame's zone stats; the start/end events it causes."""
        self.frame, self.ts = frame, ts
        events = []
        for rule in self.rules:
            holds, coverage, distance = condition(rule, zones.get(rule.zone), has_mask)
            if holds is None:
                continue  # this frame cannot tell: counters unchanged
            st = self.states[rule.name]
            st.coverage, st.distance = coverage, distance
            if holds != st.active:
                st.run += 1
                if st.run >= (rule.for_frames if not st.active else rule.clear_frames):
                    st.active, st.run = holds, 0
                    events.append(self._event(rule, "start" if holds else "end", frame, ts))
            else:
                st.run = 0
        return events

    def end(self) -> list[dict[str, Any]]:
        """The stream ended: every active rule ends (at the last frame)."""
        events = []
        for rule in self.active:
            ev = self._event(rule, "end", self.frame, self.ts)
            ev["reason"] = "eof"
            events.append(ev)
            self.states[rule.name] = RuleState()
        for st in self.states.values():
            st.run = 0
        return events


def alert_fields(ev: Mapping[str, Any]) -> list[str]:
    """An alert event as the ``{prefix}:alerts`` stream's field/value pairs (strings)."""
    out: list[str] = []
    for k in ("rule", "zone", "stream", "state", "frame", "ts", "coverage", "distance", "reason"):
        if k in ev:
            v = ev[k]
            out += [k, repr(v) if isinstance(v, float) else str(v)]
    return out


def describe_alert(ev: Mapping[str, Any]) -> str:
    """One line for ``dptstream alerts``."""
    parts = [f"{ev.get('stream', '?')} {ev.get('rule', '?')} {str(ev.get('state', '?')).upper()}",
             f"frame {ev.get('frame', '?')}", f"zone {ev.get('zone', '?')}"]
    if ev.get("coverage") not in (None, ""):
        parts.append(f"coverage {float(ev['coverage']):.1%}")
    if ev.get("distance") not in (None, ""):
        parts.append(f"distance {float(ev['distance']):.2f} m")
    if ev.get("reason"):
        parts.append(f"({ev['reason']})")
    return "  ".join(parts)
