"""The latency-budget controller: levels climb in order, recover one at a time, count their drops."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from pipeline.config import LiveSection
from pipeline.frames import Frame, FrameId, Result
from pipeline.metrics import Metrics
from pipeline.runtime.degrade import DegradeController, StreamDegrader, applicable


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _degrader(clock: Clock, **kw: Any) -> StreamDegrader:
    return StreamDegrader("cam", 0.2, ("rate", "skip_depth", "alternate_segmentation"),
                          ("segmentation", "depth"), clock=clock, wall=clock, **kw)


def _feed(d: StreamDegrader, clock: Clock, latency: float, seconds: float, fps: float = 10) -> None:
    for _ in range(int(seconds * fps)):
        clock.t += 1 / fps
        d.observe(latency, clock.t)


def test_degradation_climbs_in_order_and_recovers_one_level_at_a_time() -> None:
    clock = Clock()
    d = _degrader(clock, recover_s=3.0)
    _feed(d, clock, 0.05, 3)
    assert d.name == "none"
    _feed(d, clock, 0.5, 0.4)
    assert d.name == "none"  # a blip shorter than half the hold time: no reaction
    seen = []
    for _ in range(20):
        _feed(d, clock, 0.5, 0.5)
        seen.append(d.name)
    assert list(dict.fromkeys(seen)) == ["rate", "skip_depth", "alternate_segmentation"]
    # latency that was measured on frames decoded before the last change is ignored
    d.observe(5.0, clock.t - 10)
    assert d.name == "alternate_segmentation"
    _feed(d, clock, 0.05, 2.9)
    assert d.name == "alternate_segmentation"
    _feed(d, clock, 0.05, 0.2)
    assert d.name == "skip_depth"
    _feed(d, clock, 0.05, 3.1)
    assert d.name == "rate"
    _feed(d, clock, 0.05, 3.1)
    assert d.name == "none"


def test_a_level_undone_too_early_waits_longer_before_the_next_recovery() -> None:
    clock = Clock()
    d = _degrader(clock, recover_s=2.0)
    _feed(d, clock, 0.5, 1.05)
    assert d.name == "rate"
    _feed(d, clock, 0.05, 2.1)
    assert d.name == "none"
    _feed(d, clock, 0.5, 1.05)  # overloaded again right away: the recovery was premature
    assert d.name == "rate" and d.recover_s == 4.0
    _feed(d, clock, 0.05, 3.0)
    assert d.name == "rate"
    _feed(d, clock, 0.05, 1.1)
    assert d.name == "none"


def test_a_level_is_kept_while_undoing_it_would_overload_the_busiest_stage() -> None:
    clock = Clock()
    busy = {"now": 1.6}
    d = _degrader(clock, recover_s=1.0, headroom=lambda stream, action: busy["now"])
    _feed(d, clock, 0.5, 1.05)
    assert d.name == "rate"
    _feed(d, clock, 0.05, 5)  # latency is fine, but only because of the lower rate
    assert d.name == "rate"
    busy["now"] = 0.5  # the load fell
    _feed(d, clock, 0.05, 0.2)
    assert d.name == "none"


def test_busy_fraction_comes_from_the_stages_own_busy_time() -> None:
    m = Metrics()
    clock = Clock()
    c = DegradeController(LiveSection.model_validate({"latency_budget_ms": 100}), ("segmentation", "depth"),
                          ["a", "b"], m, clock=clock, wall=clock)
    for _ in range(9):  # the infer stage is busy 0.6 s of every second
        c._sample_busy()
        m.stage_seconds.labels(stage="infer").observe(0.15)
        m.stage_seconds.labels(stage="preprocess").observe(0.01)
        clock.t += 0.25
    c._sample_busy()
    assert c.busy() == pytest.approx(0.6, abs=0.01)
    c.write([Result(FrameId("a", i, 0, clock.t, 4, 4), None) for i in range(3)]
            + [Result(FrameId("b", 0, 0, clock.t, 4, 4), None)])
    assert c.predicted_busy("a", "rate") == pytest.approx(0.6 * (1 + 0.75), abs=0.01)
    assert c.predicted_busy("b", "skip_depth") == pytest.approx(0.6 * (1 + 0.25), abs=0.01)


def test_cameras_sharing_a_bottleneck_do_not_all_recover_at_once() -> None:
    m = Metrics()
    clock = Clock()
    c = DegradeController(LiveSection.model_validate({"latency_budget_ms": 100, "degrade_recover_s": 1}),
                          ("segmentation", "depth"), ["a", "b"], m, clock=clock, wall=clock)
    for sid in ("a", "b"):
        _feed(c.streams[sid], clock, 1.0, 1.05)
    assert {d.name for d in c.streams.values()} == {"rate"}
    for _ in range(9):  # the busiest stage is half busy; each camera has half of the work
        c._sample_busy()
        m.stage_seconds.labels(stage="infer").observe(0.125)
        clock.t += 0.25
    c._sample_busy()
    for _ in range(30):  # latency is fine for both, for 3 s
        clock.t += 0.1
        c.write([Result(FrameId(sid, 0, 0, clock.t, 4, 4), None) for sid in ("a", "b")])
    levels = sorted(d.name for d in c.streams.values())
    assert levels == ["none", "rate"]  # one recovered (0.5 -> ~0.75 busy); the other would push it to ~1.0


def _frame_of(sid: str, i: int) -> Frame:
    return Frame(FrameId(sid, i, i / 10, time.time(), 4, 4), np.zeros((4, 4, 3), np.uint8))


def test_each_level_runs_the_documented_tasks_and_counts_its_drops() -> None:
    m = Metrics()
    live = LiveSection.model_validate({"latency_budget_ms": 200})
    c = DegradeController(live, ("segmentation", "depth"), ["cam"], m)
    d = c.streams["cam"]

    def tasks(n: int) -> list[tuple[str, ...]]:
        return [c.select_tasks(_frame_of("cam", i)) for i in range(n)]

    assert tasks(4) == [("segmentation", "depth")] * 4
    d.level = 1  # rate: one frame in two
    assert tasks(4) == [("segmentation", "depth"), (), ("segmentation", "depth"), ()]
    d.level = 2  # + skip_depth
    assert tasks(4) == [("segmentation",), (), ("segmentation",), ()]
    d.level = 3  # + segmentation on every other kept frame: nothing left on those, so they drop too
    assert [t for t in tasks(8) if t] == [("segmentation",)] * 2
    assert m.registry.get_sample_value("dptstream_frames_dropped_total",
                                       {"stream": "cam", "reason": "degraded"}) == 2 + 2 + 6
    # files are never degraded
    assert c.select_tasks(_frame_of("file", 0)) == ("segmentation", "depth")


def test_levels_that_change_nothing_for_the_tasks_are_left_out() -> None:
    order = ["rate", "skip_depth", "alternate_segmentation"]
    assert applicable(order, ("segmentation",)) == ("rate", "alternate_segmentation")
    assert applicable(order, ("depth",)) == ("rate",)
    assert applicable(["skip_depth", "rate"], ("segmentation", "depth")) == ("skip_depth", "rate")


def test_the_degraded_gauge_shows_exactly_one_level() -> None:
    m = Metrics()
    clock = Clock()
    c = DegradeController(LiveSection.model_validate({"latency_budget_ms": 100}), ("segmentation", "depth"),
                          ["cam"], m, clock=clock, wall=clock)
    d = c.streams["cam"]
    _feed(d, clock, 1.0, 1.5)

    def gauge(level: str) -> float | None:
        return m.registry.get_sample_value("dptstream_degraded", {"stream": "cam", "level": level})

    assert d.name == "rate"
    assert gauge("rate") == 1 and gauge("none") == 0 and gauge("skip_depth") == 0
