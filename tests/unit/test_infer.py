"""The cross-stream batcher of the infer stage."""

from __future__ import annotations

import threading
import time

import torch

from pipeline.queues import NamedQueue


def test_batcher_waits_at_most_max_wait() -> None:
    from pipeline.metrics import Metrics
    from pipeline.stages import InferStage

    class FakeEngine:
        def __init__(self) -> None:
            self.batches: list[int] = []

        def infer(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            self.batches.append(x.shape[0])
            return {"depth": torch.zeros(x.shape[0], 4, 4)}

    from pipeline.frames import FrameId, Prepared, Shutdown

    inq: NamedQueue[object] = NamedQueue("in", 100)
    outq: NamedQueue[object] = NamedQueue("out", 100)
    eng = FakeEngine()
    st = InferStage(inq, outq, Metrics(), threading.Event(), {"depth": eng}, max_batch=4,  # type: ignore[dict-item]
                    max_wait_ms=50)
    st.start()
    for i in range(6):
        inq.put(Prepared(FrameId("s", i, 0.0, time.time(), 8, 8), {"depth": torch.zeros(1, 3, 4, 4)}, None, ("depth",)))
    time.sleep(0.3)
    inq.put(Prepared(FrameId("s", 6, 0.0, time.time(), 8, 8), {"depth": torch.zeros(1, 3, 4, 4)}, None, ("depth",)))
    inq.put(Shutdown())
    assert st.join(5)
    assert eng.batches == [4, 2, 1]  # full batch, then what arrived within max_wait, then a late frame alone
    outs = [outq.get(0.1) for _ in range(len(outq))]
    assert [o.id.index for o in outs[:-1]] == list(range(7)) and isinstance(outs[-1], Shutdown)
