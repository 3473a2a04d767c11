"""Zone geometry, rule resolution and the frame debounce (pipeline/zones.py), against independent references."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from skimage.measure import points_in_poly

from pipeline.zones import (
    Rule,
    RuleError,
    StreamRules,
    ZoneStats,
    alert_fields,
    condition,
    polygon_problem,
    rasterize,
    resolve,
    resolve_class,
)

LABELS = {0: "wall", 1: "building", 12: "person", 20: "car"}


def reference_transitions(holds: list[bool], for_frames: int, clear_frames: int) -> list[tuple[int, str]]:
    """The debounce written out the plain way: count runs of the opposite value."""
    out: list[tuple[int, str]] = []
    active = False
    run = 0
    for i, h in enumerate(holds):
        want = not active
        run = run + 1 if h == want else 0
        if run == (for_frames if not active else clear_frames):
            active = not active
            run = 0
            out.append((i, "start" if active else "end"))
    return out


def test_polygon_problems_are_named() -> None:
    assert polygon_problem([[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]]) is None
    assert "at least 3 points" in (polygon_problem([[0, 0], [1, 1]]) or "")
    assert "outside the frame" in (polygon_problem([[0, 0], [1.2, 0], [0.5, 0.5]]) or "")
    assert "outside the frame" in (polygon_problem([[0, -0.1], [1, 0], [0.5, 0.5]]) or "")
    assert "self-intersecting" in (polygon_problem([[0, 0], [1, 1], [1, 0], [0, 1]]) or "")  # a bow tie
    assert "no area" in (polygon_problem([[0, 0], [0.5, 0.5], [1, 1]]) or "")
    assert "repeats" in (polygon_problem([[0, 0], [0, 0], [1, 0], [0, 1]]) or "")
    # a concave (not crossing) polygon is fine
    assert polygon_problem([[0, 0], [1, 0], [1, 1], [0.5, 0.4], [0, 1]]) is None


@pytest.mark.parametrize("w, h", [(192, 108), (37, 23), (480, 270)])
def test_rasterize_takes_pixel_centres_inside(w: int, h: int) -> None:
    rng = np.random.default_rng(w)
    polys = [[[0.1, 0.4], [0.45, 0.4], [0.45, 1.0], [0.1, 1.0]], [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]]
    for _ in range(5):  # random convex-ish polygons: points around a centre sorted by angle
        c = rng.uniform(0.3, 0.7, 2)
        ang = np.sort(rng.uniform(0, 2 * np.pi, 6))
        rad = rng.uniform(0.05, 0.3, 6)
        polys.append([[float(np.clip(c[0] + r * np.cos(a), 0, 1)), float(np.clip(c[1] + r * np.sin(a), 0, 1))]
                      for a, r in zip(ang, rad, strict=True)])
    cols, rows = np.meshgrid((np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h)
    centres = np.stack([cols.ravel(), rows.ravel()], axis=1)
    for poly in polys:
        got = rasterize(poly, w, h)
        ref = points_in_poly(centres, np.asarray(poly)).reshape(h, w)
        # points exactly on an edge may go either way: allow only pixels on the boundary to differ
        diff = got != ref
        assert diff.sum() <= 2 * (w + h) * 0.02 + 2, f"{poly}: {int(diff.sum())} pixels differ"
    full = rasterize(polys[1], w, h)
    assert full.all()


def test_class_names_resolve_against_labels() -> None:
    assert resolve_class("person", LABELS, "r") == 12
    assert resolve_class("Person", LABELS, "r") == 12
    assert resolve_class(20, LABELS, "r") == 20
    assert resolve_class("20", LABELS, "r") == 20
    with pytest.raises(RuleError, match=r"unknown class 'persn'.*did you mean 'person'"):
        resolve_class("persn", LABELS, "r")
    with pytest.raises(RuleError, match="class id 99 is not a label"):
        resolve_class(99, LABELS, "r")


def test_distance_rule_needs_metric_depth() -> None:
    from pipeline.config import RuleConfig, ZoneConfig

    z = ZoneConfig(name="path", polygon=[[0, 0], [1, 0], [1, 1]])
    r = RuleConfig(name="near", zone="path", max_distance_m=1.5)
    with pytest.raises(RuleError, match="max_distance_m needs a metric depth checkpoint"):
        resolve([z], [r], LABELS, metric=False, depth_model="Intel/dpt-large")
    plan = resolve([z], [r], LABELS, metric=True)
    assert plan.metric and plan.rules[0].max_distance_m == 1.5
    meta = plan.meta()
    assert json.loads(meta["zones"]) == [{"name": "path", "streams": None, "polygon": [[0, 0], [1, 0], [1, 1]]}]
    assert json.loads(meta["rules"])[0]["max_distance_m"] == 1.5


def test_condition_coverage_and_distance() -> None:
    rule = Rule("r", "z", (12,), min_coverage=0.25)
    assert condition(rule, ZoneStats(100, {12: 25, 0: 75}), True)[:2] == (True, 0.25)
    assert condition(rule, ZoneStats(100, {12: 24, 0: 76}), True)[0] is False
    assert condition(rule, ZoneStats(100, {12: 24}), False)[0] is None  # no mask on this frame: cannot tell
    assert condition(Rule("r", "z", (12,)), ZoneStats(100, {0: 100}), True)[0] is False  # needs a pixel
    assert condition(Rule("r", "z", (12,)), ZoneStats(0, {}), True)[0] is False  # an empty zone never holds
    near = Rule("n", "z", (), max_distance_m=2.0)
    assert condition(near, ZoneStats(100, {}, 3.0, 1.5), True) == (True, None, 1.5)
    assert condition(near, ZoneStats(100, {}, 3.0, 2.5), True)[0] is False
    both = Rule("b", "z", (12,), 0.1, 2.0)
    st = ZoneStats(100, {12: 20, 0: 80}, 3.0, 0.5, {12: 2.5, 0: 0.5})  # the wall is near, the person is not
    assert condition(both, st, True) == (False, 0.2, 2.5)


@pytest.mark.parametrize("for_frames, clear_frames", [(1, 1), (3, 5), (2, 1), (4, 4)])
def test_debounce_gives_the_reference_transitions(for_frames: int, clear_frames: int) -> None:
    rnd = random.Random(for_frames * 10 + clear_frames)
    holds = []
    while len(holds) < 300:  # runs of random length, so both debounces are crossed many times
        holds += [rnd.random() < 0.5] * rnd.randint(1, 8)
    rule = Rule("r", "z", (12,), 0.5, None, for_frames, clear_frames)
    sr = StreamRules("cam", [rule])
    got = []
    for i, h in enumerate(holds):
        stats = ZoneStats(10, {12: 10 if h else 0, 0: 0 if h else 10})
        got += [(ev["frame"], ev["state"]) for ev in sr.step(i, 1000.0 + i, {"z": stats}, True)]
    ref = reference_transitions(holds, for_frames, clear_frames)
    assert got == ref and len(ref) >= 6


def test_state_survives_a_restart_at_any_frame() -> None:
    """Dump after frame k, load into a fresh StreamRules and go on: the same events as one uninterrupted run."""
    rnd = random.Random(7)
    holds = [rnd.random() < 0.6 for _ in range(120)]
    rules = [Rule("a", "z", (12,), 0.5, None, 3, 2), Rule("b", "z", (12,), 0.5, None, 1, 4)]

    def stats(h: bool) -> dict[str, ZoneStats]:
        return {"z": ZoneStats(10, {12: 10 if h else 1, 0: 0 if h else 9})}

    whole = StreamRules("s", rules)
    ref = [e for i, h in enumerate(holds) for e in whole.step(i, float(i), stats(h), True)] + whole.end()
    for k in (0, 5, 37, 90, 119):
        first = StreamRules("s", rules)
        evs = [e for i, h in enumerate(holds[: k + 1]) for e in first.step(i, float(i), stats(h), True)]
        second = StreamRules("s", rules, first.dump())
        evs += [e for i, h in enumerate(holds[k + 1:], k + 1) for e in second.step(i, float(i), stats(h), True)]
        evs += second.end()
        assert evs == ref, k
    assert len(ref) >= 6


def test_frames_that_cannot_tell_leave_counters_alone() -> None:
    sr = StreamRules("s", [Rule("r", "z", (12,), 0.5, None, 3, 1)])
    on = {"z": ZoneStats(10, {12: 10})}
    assert sr.step(0, 0, on, True) == [] and sr.step(1, 0, on, True) == []
    assert sr.step(2, 0, on, False) == []  # no mask (segmentation skipped): not a failing frame
    assert [e["state"] for e in sr.step(3, 0, on, True)] == ["start"]


def test_alert_fields_are_strings() -> None:
    ev = {"rule": "r", "zone": "z", "stream": "s", "state": "start", "frame": 3, "ts": 1.5, "coverage": 0.25}
    f = alert_fields(ev)
    assert f == ["rule", "r", "zone", "z", "stream", "s", "state", "start", "frame", "3", "ts", "1.5",
                 "coverage", "0.25"]
