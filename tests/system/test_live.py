"""Live cameras: a real RTSP server (gst-rtsp-server) feeding the real pipeline into a real redis-server.

Fast tests check the pure logic (backoff, state machine, frozen detector, degradation levels, credential
scrubbing). Slow tests run cameras that die, stall, freeze, refuse credentials or overload the pipeline,
and watch it over HTTP as Prometheus would.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.config import ConfigError, LiveSection, SourceConfig, load_config, redact
from pipeline.degrade import DegradeController, StreamDegrader, applicable
from pipeline.frames import Frame, FrameId, Result
from pipeline.live import Backoff, ConnectFailure, FrozenDetector, RtspSource, StateMachine, scrub
from pipeline.metrics import Metrics
from pipeline.queues import NamedQueue
from tests.conftest import ROOT, RedisServer, free_port
from tests.live_support import (
    FPS,
    NET,
    DelayEngine,
    H,
    LiveAssets,
    LivePipeline,
    W,
    engines_for,
    entries,
    make_certs,
    make_config,
    need_rtsp,
    session_live_assets,
    wait_for,
)
from tests.rtsp_server import RtspServer


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


def test_stream_up_follows_the_state() -> None:
    m = Metrics()
    q: NamedQueue[Any] = NamedQueue("decoded:cam", 2, "drop_oldest")
    src = RtspSource(SourceConfig(id="cam", uri="rtsp://u:pw@127.0.0.1:1/x"), q, m,
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


def test_camera_credentials_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"sources": [
        {"id": "door", "uri": "rtsp://admin:${DOOR_PW}@127.0.0.1:554/live"}]}))
    monkeypatch.setenv("DOOR_PW", "p@ss word")
    cfg = load_config(cfg_file)
    assert cfg.sources[0].uri == "rtsp://admin:p%40ss%20word@127.0.0.1:554/live"
    monkeypatch.delenv("DOOR_PW")
    with pytest.raises(ConfigError, match="DOOR_PW is not set"):
        load_config(cfg_file)


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


# ------------------------------------------------------------------------------------------------------
# slow: real RTSP server, real Redis, real HTTP
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> LiveAssets:
    need_rtsp()
    return session_live_assets(tmp_path_factory)


@pytest.fixture(scope="module")
def engines(live: LiveAssets) -> dict[str, Any]:
    return engines_for(live)


@pytest.fixture
def rtsp(live: LiveAssets, tmp_path: Path) -> Iterator[Callable[..., RtspServer]]:
    servers: list[RtspServer] = []

    def make(mounts: list[str], start: bool = True, **kw: Any) -> RtspServer:
        srv = RtspServer(live.raw, W, H, mounts, fps=FPS, log=tmp_path / f"rtsp{len(servers)}.log", **kw)
        servers.append(srv)
        if start:
            srv.start()
        return srv

    yield make
    for s in servers:
        s.stop()


def published(lp: LivePipeline, sid: str) -> float:
    return lp.metric("dptstream_frames_total", stream=sid, stage="published")


def final(lp: LivePipeline, name: str, **labels: str) -> float:
    """A counter's value after the run (read from the registry: the HTTP server is closed by then)."""
    total = 0.0
    for fam in lp.metrics.registry.collect():
        for s in fam.samples:
            if s.name == name and set(labels.items()) <= set(s.labels.items()):
                total += s.value
    return total


def assert_every_frame_accounted(lp: LivePipeline, sid: str) -> tuple[float, float, float]:
    """After a drained stop: every decoded frame was published or dropped, and every drop was counted."""
    dec = final(lp, "dptstream_frames_total", stream=sid, stage="decoded")
    pub = final(lp, "dptstream_frames_total", stream=sid, stage="published")
    drop = final(lp, "dptstream_frames_dropped_total", stream=sid)
    assert dec == pub + drop, (sid, dec, pub, drop)
    return dec, pub, drop


LIVE_FAST = {"reconnect_initial_s": 0.2, "reconnect_max_s": 1.0, "stall_timeout_s": 3.0}


@pytest.mark.slow
def test_rtsp_frames_reach_redis_over_tcp_and_udp(live: LiveAssets, engines: dict[str, Any],
                                                  rtsp: Callable[..., RtspServer],
                                                  redis_server: RedisServer) -> None:
    srv = rtsp(["cam"])
    cfg = make_config(live, [{"id": "tcp", "uri": srv.url("cam")},
                             {"id": "udp", "uri": srv.url("cam"), "rtsp_transport": "udp"}],
                      [redis_server.url], live=LIVE_FAST)
    r = redis_server.client()
    with LivePipeline(cfg, engines) as lp:
        wait_for(lambda: min(r.xlen("dpt:stream:tcp:frames"), r.xlen("dpt:stream:udp:frames")) >= 15, 40,
                 "15 frames of each camera in Redis")
        assert lp.metric("dptstream_stream_up", stream="tcp") == 1
        assert lp.metric("dptstream_stream_up", stream="udp") == 1
        code, body = lp.probe("/readyz")
        assert code == 200 and body["sources"] == {"tcp": "streaming", "udp": "streaming"}
    for sid in ("tcp", "udp"):
        es = entries(r, sid)
        frames = [int(e["frame"]) for e in es]
        assert frames == sorted(set(frames))  # one entry per frame, in decode order
        mask = Image.open(io.BytesIO(es[-1]["mask"]))
        assert mask.size == (NET, round(H * NET / W))
        assert json.loads(es[-1]["depth"])["kind"] == "relative_inverse"
        assert 0 < float(es[-1]["latency_ms"]) < 5000
        assert_every_frame_accounted(lp, sid)
    assert r.sismember("dpt:streams", "tcp")


@pytest.mark.slow
def test_a_killed_camera_server_comes_back_by_itself_while_other_cameras_keep_flowing(
        live: LiveAssets, engines: dict[str, Any], rtsp: Callable[..., RtspServer],
        redis_server: RedisServer) -> None:
    a = rtsp(["cam_a"])
    b = rtsp(["cam_b", "cam_c"])
    cfg = make_config(live, [{"id": "cam_a", "uri": a.url("cam_a")}, {"id": "cam_b", "uri": b.url("cam_b")},
                             {"id": "cam_c", "uri": b.url("cam_c")}], [redis_server.url], live=LIVE_FAST)
    with LivePipeline(cfg, engines) as lp:
        wait_for(lambda: all(published(lp, s) >= 10 for s in ("cam_a", "cam_b", "cam_c")), 40,
                 "frames from every camera")
        a.stop()  # the camera's server dies mid-stream
        wait_for(lambda: lp.metric("dptstream_stream_up", stream="cam_a") == 0, 10, "cam_a down")
        code, body = lp.probe("/readyz")
        assert code == 503 and body["sources"]["cam_a"] in ("backing_off", "connecting")
        assert body["sources"]["cam_b"] == "streaming"
        before = {s: published(lp, s) for s in ("cam_a", "cam_b", "cam_c")}
        time.sleep(3)
        during = {s: published(lp, s) for s in ("cam_a", "cam_b", "cam_c")}
        assert during["cam_b"] - before["cam_b"] >= 10 and during["cam_c"] - before["cam_c"] >= 10
        a.start()  # same port
        wait_for(lambda: published(lp, "cam_a") >= during["cam_a"] + 15, 30, "cam_a flowing again")
        assert lp.metric("dptstream_stream_up", stream="cam_a") == 1
        assert lp.metric("dptstream_stream_reconnects_total", stream="cam_a") >= 1
        assert lp.metric("dptstream_stream_reconnects_total", stream="cam_b") == 0
        assert lp.metric("dptstream_stream_reconnects_total", stream="cam_c") == 0
        wait_for(lambda: lp.probe("/readyz")[0] == 200, 10, "ready again")
    frames = [int(e["frame"]) for e in entries(redis_server.client(), "cam_a")]
    assert frames == sorted(set(frames)) and len(frames) >= during["cam_a"] + 15
    for s in ("cam_a", "cam_b", "cam_c"):
        assert_every_frame_accounted(lp, s)


@pytest.mark.slow
def test_stalled_and_frozen_cameras_are_reconnected_and_a_moving_one_is_left_alone(
        live: LiveAssets, engines: dict[str, Any], rtsp: Callable[..., RtspServer],
        redis_server: RedisServer) -> None:
    srv = rtsp(["stall:stall_after=1", "frozen:freeze_after=1", "moving"])
    cfg = make_config(live, [{"id": m, "uri": srv.url(m)} for m in ("stall", "frozen", "moving")],
                      [redis_server.url],
                      live={"reconnect_initial_s": 0.2, "reconnect_max_s": 0.4, "stall_timeout_s": 1.5,
                            "frozen_timeout_s": 1.5})
    with LivePipeline(cfg, engines) as lp:
        wait_for(lambda: lp.metric("dptstream_stream_reconnects_total", stream="stall", reason="stall") >= 2
                 and lp.metric("dptstream_stream_reconnects_total", stream="frozen", reason="frozen") >= 2,
                 40, "two stall and two frozen reconnects")
        assert lp.metric("dptstream_stream_reconnects_total", stream="moving") == 0
        assert lp.metric("dptstream_stream_reconnects_total", stream="stall", reason="frozen") == 0
        assert published(lp, "stall") > 0 and published(lp, "frozen") > 0
        assert lp.metric("dptstream_stream_up", stream="moving") == 1


@pytest.mark.slow
def test_a_camera_down_at_start_is_retried_until_it_comes_up(
        live: LiveAssets, engines: dict[str, Any], rtsp: Callable[..., RtspServer],
        redis_server: RedisServer) -> None:
    srv = rtsp(["cam"], start=False)
    cfg = make_config(live, [{"id": "cam", "uri": srv.url("cam")}], [redis_server.url], live=LIVE_FAST)
    with LivePipeline(cfg, engines) as lp:
        wait_for(lambda: lp.metric("dptstream_stream_reconnects_total", stream="cam", reason="unreachable") >= 3,
                 15, "retries while the camera is down")
        assert lp.pipeline.running
        srv.start()
        wait_for(lambda: published(lp, "cam") >= 10, 30, "frames once the camera is up")
    assert_every_frame_accounted(lp, "cam")


@pytest.mark.slow
def test_rtsps_cameras_are_read_over_tls_and_verified_when_asked(
        live: LiveAssets, engines: dict[str, Any], rtsp: Callable[..., RtspServer],
        redis_server: RedisServer, tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    srv = rtsp(["cam"], tls_cert=certs / "server.crt", tls_key=certs / "server.key")
    assert srv.url("cam").startswith("rtsps://")
    cfg = make_config(live, [{"id": "tls", "uri": srv.url("cam")}], [redis_server.url],
                      live={**LIVE_FAST, "rtsps_ca_file": str(certs / "ca.crt")})
    with LivePipeline(cfg, engines) as lp:
        wait_for(lambda: published(lp, "tls") >= 10, 40, "frames over rtsps")
    assert_every_frame_accounted(lp, "tls")
    # a certificate from another CA is refused, with a hint
    bad = RtspSource(cfg.sources[0], NamedQueue("decoded:tls", 2, "drop_oldest"), Metrics(),
                     live=LiveSection.model_validate({"rtsps_ca_file": str(certs / "other-ca.crt")}))
    with pytest.raises(ConnectFailure) as e:
        bad._open()
    assert "rtsps_ca_file" in e.value.message


LATENCY_QUEUES = {"decoded": 1, "prepared": 1, "inferred": 1, "results": 2}


@pytest.mark.slow
def test_a_slow_sink_with_a_live_camera_drops_visibly_and_latency_stays_bounded(
        live: LiveAssets, engines: dict[str, Any], rtsp: Callable[..., RtspServer],
        redis_server: RedisServer) -> None:
    srv = rtsp(["cam"])
    cfg = make_config(live, [{"id": "cam", "uri": srv.url("cam")}], [redis_server.url], live=LIVE_FAST,
                      queues=LATENCY_QUEUES, engine={"batch_size": 1})
    admin = redis_server.client()
    stop = threading.Event()

    def slow_redis() -> None:  # Redis answers nothing for 900 ms of every second
        while not stop.is_set():
            admin.execute_command("CLIENT", "PAUSE", "900", "ALL")
            time.sleep(1.0)

    with LivePipeline(cfg, engines) as lp:
        wait_for(lambda: published(lp, "cam") >= 5, 30, "first frames")
        t0 = time.time()
        pauser = threading.Thread(target=slow_redis, daemon=True)
        pauser.start()
        time.sleep(10)
        stop.set()
        pauser.join()
        q = lp.scrape()
    dec, pub, _ = assert_every_frame_accounted(lp, "cam")
    assert final(lp, "dptstream_frames_dropped_total", stream="cam", reason="queue_full") > 0
    lat = [float(e["latency_ms"]) for e in entries(redis_server.client(), "cam") if float(e["ts"]) > t0 + 1]
    assert len(lat) >= 10
    # ~15 frames/s arrive and the sink takes about half: an unbounded queue would be 5+ s behind by now,
    # while the frames in flight (a handful, the latency profile's queues) wait one or two pauses at most
    assert pub < 0.8 * dec
    assert max(lat) < 3500, sorted(lat)[-5:]
    assert q  # /metrics answered while Redis was slow


@pytest.mark.slow
def test_an_overloaded_camera_degrades_within_its_budget_and_recovers(
        live: LiveAssets, engines: dict[str, Any], rtsp: Callable[..., RtspServer],
        redis_server: RedisServer) -> None:
    srv = rtsp(["cam"])
    # 100 ms more per frame and task (a busy accelerator): ~4 frames/s for a 15 frames/s camera; halving the
    # rate is not enough, skipping depth as well is
    slow = {t: DelayEngine(e, 0.1) for t, e in engines.items()}
    cfg = make_config(live, [{"id": "cam", "uri": srv.url("cam")}], [redis_server.url],
                      live={**LIVE_FAST, "latency_budget_ms": 600, "degrade_recover_s": 1.0},
                      queues=LATENCY_QUEUES, engine={"batch_size": 1})
    r = redis_server.client()

    def level(lp: LivePipeline) -> str:
        s = lp.scrape()
        on = [dict(ls)["level"] for (n, ls), v in s.items() if n == "dptstream_degraded" and v == 1]
        assert len(on) == 1
        return on[0]

    with LivePipeline(cfg, slow) as lp:
        wait_for(lambda: level(lp) in ("skip_depth", "alternate_segmentation"), 40, "degraded to skip_depth")
        t_deg = time.time()
        time.sleep(4)
        t_end = time.time()
        assert lp.metric("dptstream_frames_dropped_total", stream="cam", reason="degraded") > 0
        for e in slow.values():
            e.delay = 0.0  # the load falls
        wait_for(lambda: level(lp) == "none", 45, "back to full service")
        t_back = time.time()
        time.sleep(3)
    es = entries(r, "cam")
    during = [e for e in es if t_deg + 1 < float(e["ts"]) < t_end]
    assert during, "frames published while degraded"
    lat = sorted(float(e["latency_ms"]) for e in during)
    assert lat[len(lat) // 2] < 600, lat  # the median frame is within the budget while degraded
    assert any("depth" not in e for e in during)  # depth was skipped
    after = [e for e in es if float(e["ts"]) > t_back + 0.5]
    assert len(after) >= 25 and all("depth" in e and "mask" in e for e in after)  # full service: ~15/s
    assert_every_frame_accounted(lp, "cam")


# ------------------------------------------------------------------------------------------------------
# slow: the command line, as a user runs it
# ------------------------------------------------------------------------------------------------------
def live_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    e = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=e, cwd=str(ROOT))


def model_flags(live: LiveAssets) -> list[str]:
    return ["-m", f"segmentation={live.segmentation}", "-m", f"depth={live.depth}", "--device", "cpu"]


@pytest.fixture
def silent_host() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a hung camera)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield int(s.getsockname()[1])
    s.close()


@pytest.mark.slow
def test_bad_cameras_get_one_clear_line_each_and_are_retried_per_config(
        live: LiveAssets, rtsp: Callable[..., RtspServer], redis_server: RedisServer, silent_host: int,
        tmp_path: Path) -> None:
    srv = rtsp(["cam"], user="admin", password="Right-Pass-1")
    cfg = tmp_path / "cams.yaml"
    cfg.write_text(yaml.safe_dump({
        "sources": [
            {"id": "wrongpw", "uri": srv.url("cam", "admin", "Not-The-Pass-2")},
            {"id": "closed", "uri": f"rtsp://127.0.0.1:{free_port()}/live"},
            {"id": "silent", "uri": f"rtsp://127.0.0.1:{silent_host}/live", "open_timeout_s": 1},
        ],
        "live": {"max_attempts": 3, "reconnect_initial_s": 0.1, "reconnect_max_s": 0.2},
    }))
    p = live_cli("run", str(cfg), *model_flags(live), "--sink", redis_server.url, "--metrics-port", "-1")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1, err
    errors = [ln for ln in err.splitlines() if ln.startswith("dptstream: error:")]
    assert len(errors) == 3, err
    by_id = {sid: next(ln for ln in errors if f"camera '{sid}'" in ln) for sid in ("wrongpw", "closed", "silent")}
    assert "refused the credentials" in by_id["wrongpw"] and "user name and password" in by_id["wrongpw"]
    assert "connection refused" in by_id["closed"]
    assert "no answer within 1s" in by_id["silent"]
    assert all("gave up after 3 attempts (live.max_attempts)" in ln for ln in errors)
    assert "admin:***@" in by_id["wrongpw"]
    assert "Not-The-Pass-2" not in err + out and "Traceback" not in err
    # logged once per camera and reason, not once per attempt
    assert sum("wrongpw" in ln and "reconnecting in" in ln for ln in err.splitlines()) == 1


@pytest.mark.slow
def test_fail_if_down_at_start_stops_the_run_with_one_line(live: LiveAssets, redis_server: RedisServer,
                                                            tmp_path: Path) -> None:
    cfg = tmp_path / "strict.yaml"
    cfg.write_text(yaml.safe_dump({"sources": [f"rtsp://127.0.0.1:{free_port()}/door"],
                                   "live": {"fail_if_down_at_start": True}}))
    p = live_cli("run", str(cfg), *model_flags(live), "--sink", redis_server.url, "--metrics-port", "-1")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1, err
    errors = [ln for ln in err.splitlines() if ln.startswith("dptstream: error:")]
    assert len(errors) == 1 and "camera 'door'" in errors[0] and "fail_if_down_at_start" in errors[0], err
    assert "Traceback" not in err


@pytest.mark.slow
def test_passwords_never_reach_logs_metrics_or_probes(live: LiveAssets, rtsp: Callable[..., RtspServer],
                                                      redis_server: RedisServer, tmp_path: Path) -> None:
    cam_pw, wrong_pw, redis_pw = "CamPw-7731", "WrongPw-5519", "RedisPw-2284"
    srv = rtsp(["cam", "cam2"], user="admin", password=cam_pw)
    admin = redis_server.client()
    admin.acl_setuser("dpt", enabled=True, passwords=[f"+{redis_pw}"], keys=["*"], channels=["*"],
                      commands=["+@all"])
    cfg = tmp_path / "cams.yaml"
    cfg.write_text(yaml.safe_dump({
        "sources": [{"id": "good", "uri": f"rtsp://admin:${{CAM_PW}}@127.0.0.1:{srv.port}/cam"},
                    {"id": "bad", "uri": srv.url("cam2", "admin", wrong_pw)}],
        "live": {"reconnect_initial_s": 0.2, "reconnect_max_s": 0.5},
    }))
    port = free_port()
    env = {"CAM_PW": cam_pw, "REDIS_URL": f"redis://dpt:{redis_pw}@127.0.0.1:{redis_server.port}/0"}
    p = live_cli("run", str(cfg), *model_flags(live), "--metrics-port", str(port), "--debug", env=env)
    try:
        wait_for(lambda: p.poll() is not None or admin.xlen("dpt:stream:good:frames") >= 5, 90,
                 "frames from the good camera")
        assert p.poll() is None
        import urllib.error
        import urllib.request

        bodies = []
        for path in ("/metrics", "/readyz", "/healthz"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
                    bodies.append(resp.read().decode())
            except urllib.error.HTTPError as e:  # /readyz is 503: the bad camera is down
                bodies.append(e.read().decode())
        assert 'dptstream_stream_reconnects_total{reason="auth",stream="bad"}' in bodies[0]
        assert '"bad": "backing_off"' in bodies[1] or '"bad": "connecting"' in bodies[1]
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "admin:***@" in err and "dpt:***@" in err  # the URIs are shown, redacted
    for secret in (cam_pw, wrong_pw, redis_pw):
        for text in (out, err, *bodies):
            assert secret not in text


@pytest.mark.parametrize("name", ["latency", "throughput"])
def test_profiles_load_and_keep_live_queues_dropping(name: str) -> None:
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", {"sources": [{"id": "cam", "uri": "rtsp://h/s"}]})
    assert cfg.queues.live_policy == "drop_oldest" and cfg.live.latency_budget_ms > 0
    if name == "latency":
        assert cfg.engine.batch_size == 1 and cfg.engine.max_wait_ms == 0
        assert max(cfg.queues.decoded, cfg.queues.prepared, cfg.queues.inferred, cfg.queues.results) <= 2
    else:
        assert cfg.engine.batch_size >= 8 and cfg.queues.prepared >= 16
