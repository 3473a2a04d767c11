"""The RTSP source without a server: stream_up follows the state, the frozen-picture detector, scrubbing."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.config import LiveSection, SourceConfig
from pipeline.metrics import Metrics
from pipeline.queues import NamedQueue
from pipeline.redact import redact, scrub
from pipeline.sources.live import FrozenDetector, LiveSource
from tests.support.live import (
    H,
    W,
)


def test_stream_up_follows_the_state() -> None:
    m = Metrics()
    q: NamedQueue[Any] = NamedQueue("decoded:cam", 2, "drop_oldest")
    src = LiveSource(SourceConfig(id="cam", uri="rtsp://u:pw@127.0.0.1:1/x"), q, m,
                     live=LiveSection.model_validate({}))
    up = m.registry.get_sample_value("dptstream_stream_up", {"stream": "cam"})
    assert src.state == "idle" and up == 0
    src._sm.to("connecting")
    src._sm.to("streaming")
    assert m.registry.get_sample_value("dptstream_stream_up", {"stream": "cam"}) == 1
    src._sm.to("backing_off")
    assert m.registry.get_sample_value("dptstream_stream_up", {"stream": "cam"}) == 0
    assert "pw" not in src.safe_uri


def _frame(seed: int, noise: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    if noise:
        jitter = np.random.default_rng().integers(-noise, noise + 1, base.shape)
        base = np.clip(base.astype(int) + jitter, 0, 255).astype(np.uint8)
    return base


def test_frozen_detector_needs_the_same_picture_for_the_whole_timeout() -> None:
    d = FrozenDetector(timeout=2.0, tolerance=2.0)
    for i in range(50):  # a moving picture is never frozen
        assert not d.update(_frame(i), i * 0.1)
    still = [_frame(99, noise=3) for _ in range(40)]  # the same picture, re-encoded (pixel noise)
    hits = [d.update(img, 5.0 + i * 0.1) for i, img in enumerate(still)]
    assert not any(hits[:20]) and all(hits[21:])
    assert not d.update(_frame(7), 9.5)  # a change starts a new run
    assert not FrozenDetector(timeout=0).update(still[0], 100.0)  # 0 = off


def test_credentials_never_survive_redaction_or_scrubbing() -> None:
    uri = "rtsp://admin:S3cr%40t!@10.0.0.5:554/stream1"
    assert "S3cr" not in redact(uri)
    msg = f"[Errno 1] Server returned 401: '{uri}' (password S3cr@t!)"
    assert "S3cr" not in scrub(msg, uri)
    assert "10.0.0.5" in scrub(msg, uri)
