"""Named queues and their policies: backpressure, drop_oldest with counted drops, fair fan-in."""

from __future__ import annotations

import threading

import pytest

from pipeline.frames import EndOfStream
from pipeline.queues import FanIn, NamedQueue


def test_block_queue_applies_backpressure_and_loses_nothing() -> None:
    q: NamedQueue[int] = NamedQueue("t", 2, "block")
    assert q.put(1) and q.put(2)
    assert q.put(3, timeout=0.05) is False  # full: the producer waits (here: times out)
    got: list[int] = []

    def consume() -> None:
        for _ in range(3):
            got.append(q.get(timeout=2))

    t = threading.Thread(target=consume)
    t.start()
    assert q.put(3, timeout=2)
    t.join(2)
    assert got == [1, 2, 3] and q.dropped == 0


def test_drop_oldest_keeps_newest_counts_drops_and_never_drops_markers() -> None:
    dropped: list[object] = []
    q: NamedQueue[object] = NamedQueue("t", 2, "drop_oldest", on_drop=dropped.append,
                                       is_control=lambda x: isinstance(x, EndOfStream))
    q.put(1)
    q.put(2)
    q.put(3)  # evicts 1
    eos = EndOfStream("s", 3)
    q.put(eos)  # markers always get in
    q.put(4)  # evicts 2, never the marker
    assert dropped == [1, 2] and q.dropped == 2
    assert [q.get(0.1) for _ in range(len(q))] == [3, eos, 4]


def test_fan_in_round_robin_is_fair() -> None:
    fan: FanIn[str] = FanIn()
    a: NamedQueue[str] = NamedQueue("a", 10, listener=fan.event)
    b: NamedQueue[str] = NamedQueue("b", 10, listener=fan.event)
    fan.add(a)
    fan.add(b)
    for i in range(3):
        a.put(f"a{i}")
    b.put("b0")
    assert [fan.get(0.1) for _ in range(4)] == ["a0", "b0", "a1", "a2"]
    with pytest.raises(TimeoutError):
        fan.get(0.05)


