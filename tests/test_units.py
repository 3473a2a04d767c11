"""Fast pure-logic tests of our own pieces: queues, config, ids, mask sizes, postprocess math."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import ConfigError, load_config, parse_source, redact
from pipeline.frames import EndOfStream, valid_stream_id
from pipeline.postprocess import class_fractions, depth_summary, mask_size, segment
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


@pytest.mark.parametrize("sid, ok", [("cam-1", True), ("a.b_c", True), ("x" * 64, True), ("x" * 65, False),
                                     ("", False), ("a b", False), ("a:b", False), ("../x", False), ("..", False)])
def test_stream_id_validation(sid: str, ok: bool) -> None:
    assert valid_stream_id(sid) is ok


def test_parse_source_ids() -> None:
    assert parse_source("/data/front door.mp4").id == "front_door"
    assert parse_source("cam1=rtsp://u:p@host:554/live/ch1").id == "cam1"
    assert parse_source("rtsp://host/live/ch1").id == "live_ch1"
    assert parse_source("file:///x/clip.mkv").path == "/x/clip.mkv"
    with pytest.raises(ConfigError, match="invalid stream id"):
        parse_source("bad!=clip.mp4")


def test_redact_hides_passwords() -> None:
    assert redact("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    assert "s3cret" not in redact("rtsps://admin:s3cret@cam/stream")


def test_unknown_config_key_is_named(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("engine:\n  batch_size: 4\n  bogus_key: 1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'engine\.bogus_key'"):
        load_config(p)


def test_flags_override_yaml_and_sinks_are_checked(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("engine: {batch_size: 4, max_wait_ms: 3}\nsources: [clip.mp4]\n")
    cfg = load_config(p, {"engine": {"batch_size": 2}})
    assert cfg.engine.batch_size == 2 and cfg.engine.max_wait_ms == 3 and cfg.sources[0].id == "clip"
    with pytest.raises(ConfigError, match="unknown sink"):
        load_config(None, {"sinks": ["kafka://x"]})


def test_redis_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:pw@example:6380/2")
    assert load_config(None).sinks == ["redis://:pw@example:6380/2"]
    assert load_config(None, {"sinks": ["dir:out"]}).sinks == ["dir:out"]


def test_mask_size_rules() -> None:
    assert mask_size("default", 1280, 720, 480) == (480, 270)
    assert mask_size("default", 720, 1280, 480) == (270, 480)
    assert mask_size("network", 1280, 720, 480) == (480, 480)
    assert mask_size("source", 1280, 720, 480) == (1280, 720)
    assert mask_size("320x200", 1280, 720, 480) == (320, 200)


def test_segment_equals_interpolate_then_argmax_in_both_layouts() -> None:
    torch.manual_seed(0)
    logits = torch.randn(150, 48, 48) * 2.5
    ref = F.interpolate(logits[None], size=(27, 48), mode="bilinear", align_corners=False)[0].argmax(0)
    assert torch.equal(segment(logits, (27, 48)).long(), ref)
    cl = logits[None].contiguous(memory_format=torch.channels_last)[0]
    assert torch.equal(segment(cl, (27, 48)).long(), ref)


def test_depth_summary_matches_torch_reference() -> None:
    torch.manual_seed(1)
    depth = torch.rand(54, 96) * 5
    mask = torch.randint(0, 7, (54, 96), dtype=torch.uint8)
    s = depth_summary(depth, mask, grid=4)
    flat = depth.reshape(-1)
    q = torch.quantile(flat, torch.tensor([0.05, 0.5, 0.95]))
    assert s["kind"] == "relative_inverse"
    assert s["min"] == pytest.approx(float(flat.min()), abs=1e-5)
    assert s["mean"] == pytest.approx(float(flat.mean()), abs=1e-5)
    assert [s["p05"], s["p50"], s["p95"]] == pytest.approx(q.tolist(), abs=1e-5)
    assert s["grid"][1][2] == pytest.approx(float(torch.quantile(depth[13:27, 48:72].reshape(-1), 0.9)), abs=1e-5)
    for c in range(7):
        assert s["per_class"][str(c)] == pytest.approx(float(flat[mask.reshape(-1) == c].median()), abs=1e-6)
    fr = class_fractions(mask, 150)
    assert sum(fr.values()) == pytest.approx(1.0, abs=1e-4) and set(fr) == set(range(7))


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
