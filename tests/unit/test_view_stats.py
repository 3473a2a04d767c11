"""pipeline/view/stats.py: rates from the last entries, tile states, zones and active alerts from Redis values."""

from __future__ import annotations

import json

import pytest

from pipeline.overlay import PALETTE
from pipeline.view.stats import (
    RateWindow,
    Sample,
    Zone,
    entry_key,
    entry_ms,
    parse_active_alerts,
    parse_classes,
    parse_labels,
    parse_zones,
    tile_state,
    top_classes,
)


def test_entry_ids() -> None:
    assert entry_ms(b"1700000000123-4") == 1700000000123
    assert entry_key("1700000000123-4") < entry_key("1700000000123-10") < entry_key("1700000000124-0")


def test_rate_window_fps_latency_and_window() -> None:
    w = RateWindow(window_s=5.0)
    assert w.fps() is None and w.latency_ms() is None
    w.add([Sample(1000, 0, 10.0)])
    assert w.fps() is None  # one entry: no rate yet
    w.add([Sample(1000 + 100 * i, i, 10.0 + i) for i in range(1, 11)])  # 10 per second
    assert w.fps() == pytest.approx(10.0)
    assert w.latency_ms() == pytest.approx(sum(10.0 + i for i in range(11)) / 11)
    w.add([Sample(9000, 11, None)])  # 7 s later: the older entries leave the window
    assert len(w) == 1 and w.fps() is None and w.latency_ms() is None
    w.add([Sample(9500, 12, 5.0)])
    assert w.fps() == pytest.approx(2.0) and w.latency_ms() == 5.0
    w.reset()
    assert len(w) == 0


def test_tile_state() -> None:
    assert tile_state(1.0, 5.0, redis_ok=False) == "unreachable"
    assert tile_state(None, 5.0, redis_ok=True) == "waiting"
    assert tile_state(4.9, 5.0, redis_ok=True) == "fresh"
    assert tile_state(5.1, 5.0, redis_ok=True) == "stale"


def test_classes_and_labels() -> None:
    assert parse_classes(b'{"3": 0.25, "12": 0.75}') == {3: 0.25, 12: 0.75}
    assert parse_classes(None) == {} and parse_classes(b"not json") == {} and parse_classes(b"[1]") == {}
    assert parse_labels(b'{"0": "wall", "12": "person"}') == {0: "wall", 12: "person"}
    top = top_classes({3: 0.25, 12: 0.75, 5: 0.25}, {12: "person"}, PALETTE, n=2)
    assert [(c["id"], c["name"], c["coverage"]) for c in top] == [(12, "person", 0.75), (3, "3", 0.25)]
    r, g, b = PALETTE[12]
    assert top[0]["color"] == f"#{r:02x}{g:02x}{b:02x}"


def test_zones_from_meta() -> None:
    raw = json.dumps([
        {"name": "door", "streams": ["front"], "polygon": [[0.1, 0.4], [0.45, 0.4], [0.45, 1.0]]},
        {"name": "all", "streams": None, "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]},
        {"name": "bad", "polygon": [[0, 0], [1, 1]]},  # fewer than 3 points: skipped
        {"polygon": [[0, 0], [1, 0], [1, 1]]},  # no name: skipped
    ])
    zones = parse_zones(raw)
    assert [z.name for z in zones] == ["door", "all"]
    assert zones[0] == Zone("door", ("front",), ((0.1, 0.4), (0.45, 0.4), (0.45, 1.0)))
    assert zones[0].applies_to("front") and not zones[0].applies_to("back")
    assert zones[1].applies_to("back")
    assert parse_zones(None) == [] and parse_zones(b"{") == [] and parse_zones(b'{"a": 1}') == []


def test_active_alerts_per_stream() -> None:
    start = {"rule": "person-in-door", "zone": "door", "stream": "front", "state": "start", "frame": 7,
             "ts": 1.5, "coverage": 0.3, "distance": None}
    raw = {b"front/person-in-door": json.dumps(start).encode(), b"front/a-rule": b"{}",
           b"back/blocked": json.dumps({"rule": "blocked", "zone": "bay"}).encode(),
           b"no-slash": b"{}", b"bad id!/r": b"{}"}
    got = parse_active_alerts(raw)
    assert sorted(got) == ["back", "front"]
    assert got["front"] == [{"rule": "a-rule", "zone": None},
                            {"rule": "person-in-door", "zone": "door", "frame": 7, "ts": 1.5, "coverage": 0.3}]
    assert got["back"] == [{"rule": "blocked", "zone": "bay"}]
