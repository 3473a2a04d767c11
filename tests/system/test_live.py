"""Live cameras: a real RTSP server (gst-rtsp-server) feeding the real pipeline into a real redis-server.

Fast tests check the pure logic (backoff, state machine, frozen detector, degradation levels, credential
scrubbing). Slow tests run cameras that die, stall, freeze, refuse credentials or overload the pipeline,
and watch it over HTTP as Prometheus would.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from pipeline.config import LiveSection
from pipeline.metrics import Metrics
from pipeline.queues import NamedQueue
from pipeline.sources.live import LiveSource
from pipeline.sources.reconnect import ConnectFailure
from tests.support.live import (
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
from tests.support.rtsp_server import RtspServer
from tests.support.servers import ROOT, RedisServer, cli, cli_process, free_port, model_args, one_error_line


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
    bad = LiveSource(cfg.sources[0], NamedQueue("decoded:tls", 2, "drop_oldest"), Metrics(),
                     live=LiveSection.model_validate({"rtsps_ca_file": str(certs / "other-ca.crt")}))
    with pytest.raises(ConnectFailure) as e:
        bad._open()
    assert "rtsps_ca_file" in e.value.message


LATENCY_QUEUES = {"decoded": 1, "prepared": 1, "inferred": 1, "results": 2}
# frames a live chain with these queues can hold: the queue slots (5), one frame in each of preprocess, infer
# (batch 1) and postprocess, and the publish stage's batch (at most the results queue, 2), plus one of slack
IN_FLIGHT_MAX = 5 + 3 + 2 + 1


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
    # (captured, published) of each frame, from the entry's ts and latency_ms
    times = [(float(e["ts"]), float(e["ts"]) + float(e["latency_ms"]) / 1000.0)
             for e in entries(redis_server.client(), "cam")]
    late = [t for t in times if t[0] > t0 + 1]
    assert len(late) >= 10
    # ~15 frames/s arrive and the sink takes about half
    assert pub < 0.8 * dec
    # Latency stays bounded in frames, whatever the machine's speed: when a frame was captured, the frames still
    # ahead of it (captured before, published after) are at most what the chain holds -- one per queue slot and
    # one per stage, batches of the publish stage included (10 here). An unbounded queue would hold every
    # frame the sink could not take: ~8 more each second, 40+ by the end of the window.
    ahead = [sum(1 for c, p in times if c < cap and p > cap) for cap, _ in late]
    assert max(ahead) <= IN_FLIGHT_MAX, (max(ahead), sorted(ahead)[-5:])
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


@pytest.mark.slow
@pytest.mark.parametrize("query", ["user=admin&password=TOPSECRET1", "token=TOPSECRET1", "access_token=TOPSECRET1"])
def test_a_camera_secret_in_the_query_string_is_hidden(assets: dict[str, Path], tmp_path: Path,
                                                       query: str) -> None:
    cfg = tmp_path / "live1.yaml"
    cfg.write_text("live: {max_attempts: 1, fail_if_down_at_start: true}\n")
    p = cli("run", str(cfg), "-s", f"cam=http://127.0.0.1:{free_port()}/video.mjpg?{query}", *model_args(assets),
            "--sink", f"dir:{tmp_path / 'out'}", "--metrics-port", "-1", timeout=120)
    assert p.returncode == 1, p.stderr
    line = one_error_line(p.stderr)
    assert "/video.mjpg?" in line and "=***" in line
    assert "TOPSECRET1" not in p.stdout + p.stderr


@pytest.fixture
def http_server(assets: dict[str, Path], tmp_path: Path) -> Iterator[int]:
    root = tmp_path / "www"
    root.mkdir()
    shutil.copy(assets["clip360"], root / "clip.mp4")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield int(srv.server_address[1])
    srv.shutdown()
    srv.server_close()


@pytest.mark.slow
def test_http_source_is_live_reconnects_at_its_end_and_never_shows_the_password(
        assets: dict[str, Path], tmp_path: Path, http_server: int) -> None:
    out = tmp_path / "out"
    url = f"http://viewer:pw123@127.0.0.1:{http_server}/clip.mp4"
    lines = out / "web.jsonl"
    with cli_process("run", "-s", f"web={url}", *model_args(assets), "--sink", f"dir:{out}", "--metrics-port",
                     "-1") as proc:
        deadline = time.time() + 120
        while time.time() < deadline and (not lines.exists() or len(lines.read_text().splitlines()) < 30):
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    frames = [json.loads(x)["frame"] for x in lines.read_text().splitlines()]
    assert len(frames) >= 30, err  # the 20-frame file ended, was reopened (live reconnect) and read again
    assert frames == sorted(frames) and len(set(frames)) == len(frames)
    assert proc.returncode == 0, err
    assert "pw123" not in err and "viewer:***@127.0.0.1" in err and "reconnecting" in err


@pytest.mark.slow
def test_http_source_down_gives_up_with_the_password_hidden(assets: dict[str, Path], tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"sources: [{{id: web, uri: 'https://u:pw123@127.0.0.1:{port}/live.m3u8'}}]\n"
                   f"sinks: ['dir:{tmp_path / 'out'}']\nlive: {{max_attempts: 2, reconnect_initial_s: 0.1}}\n"
                   "metrics: {port: null}\n")
    p = cli("run", str(cfg), *model_args(assets))
    assert p.returncode == 1, p.stderr
    line = one_error_line(p.stderr)
    assert "u:***@127.0.0.1" in line and "gave up after 2 attempts" in line
    assert "pw123" not in p.stderr + p.stdout
