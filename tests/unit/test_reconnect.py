"""Reconnect logic of live cameras: the backoff and the camera state machine."""

from __future__ import annotations

import random

import pytest

from pipeline.sources.reconnect import Backoff, StateMachine


# ------------------------------------------------------------------------------------------------------
# fast: pure logic
# ------------------------------------------------------------------------------------------------------
def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    b = Backoff(0.5, 4.0, jitter=0.5, rng=random.Random(1))
    delays = [b.next() for _ in range(8)]
    bases = [0.5, 1, 2, 4, 4, 4, 4, 4]
    for d, base in zip(delays, bases, strict=True):
        assert base * 0.5 <= d <= base
    assert len({round(d, 6) for d in delays[3:]}) > 1  # jitter: capped delays still differ
    b.reset()
    assert b.next() <= 0.5
    assert Backoff(1.0, 8.0, jitter=0.0).next() == 1.0


def test_state_machine_allows_only_the_camera_lifecycle() -> None:
    seen: list[tuple[str, str]] = []
    sm = StateMachine(lambda old, new: seen.append((old, new)))
    assert sm.state == "idle"
    for s in ("connecting", "backing_off", "connecting", "streaming", "backing_off", "stopped"):
        sm.to(s)
    assert seen[-1] == ("backing_off", "stopped")
    with pytest.raises(RuntimeError):
        sm.to("streaming")  # stopped is final
    with pytest.raises(RuntimeError):
        StateMachine().to("streaming")  # never streaming without connecting first
