"""/healthz (process alive) and /readyz (sources up, sink reachable) on the metrics port, over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engines import Engine
from tests.support.live import (
    FPS,
    H,
    LiveAssets,
    LivePipeline,
    W,
    engines_for,
    make_config,
    need_rtsp,
    session_live_assets,
    wait_for,
)
from tests.support.rtsp_server import RtspServer
from tests.support.servers import ROOT, RedisServer, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> LiveAssets:
    need_rtsp()
    return session_live_assets(tmp_path_factory)


@pytest.fixture
def camera(live: LiveAssets, tmp_path: Path) -> Iterator[RtspServer]:
    srv = RtspServer(live.raw, W, H, ["cam"], fps=FPS, log=tmp_path / "rtsp.log")
    srv.start()
    yield srv
    srv.stop()


def probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:
        return 0, {}


def test_probes_follow_the_camera_and_the_sink_in_a_real_run(live: LiveAssets, camera: RtspServer,
                                                             redis_server: RedisServer) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--source", f"cam={camera.url('cam')}", "--sink",
         redis_server.url, "-m", f"segmentation={live.segmentation}", "-m", f"depth={live.depth}",
         "--device", "cpu", "--metrics-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
    try:
        def ready() -> bool:
            assert p.poll() is None, p.communicate()[1]
            return probe(port, "/readyz")[0] == 200

        wait_for(ready, 90, "the run to become ready")
        code, body = probe(port, "/readyz")
        assert body["ok"] is True and body["sources"] == {"cam": "streaming"}
        assert list(body["sinks"].values()) == [True]

        camera.stop()
        wait_for(lambda: probe(port, "/readyz")[0] == 503, 15, "not ready without the camera")
        code, body = probe(port, "/readyz")
        assert body["ok"] is False and body["sources"]["cam"] in ("backing_off", "connecting")
        code, body = probe(port, "/healthz")
        assert code == 200 and body["ok"] is True
        camera.start()
        wait_for(lambda: probe(port, "/readyz")[0] == 200, 30, "ready with the camera back")

        redis_server.stop()
        wait_for(lambda: probe(port, "/readyz")[0] == 503, 15, "not ready without Redis")
        code, body = probe(port, "/readyz")
        assert list(body["sinks"].values()) == [False] and body["sources"] == {"cam": "streaming"}
        assert probe(port, "/healthz")[0] == 200
        redis_server.start()
        wait_for(lambda: probe(port, "/readyz")[0] == 200, 30, "ready with Redis back")
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err


class BrokenEngine(Engine):
    """Our engine interface, failing the way a dead GPU does."""

    def __init__(self, inner: Any) -> None:
        self.spec = inner.spec

    def infer(self, batch: Any) -> Any:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def close(self) -> None:
        pass


def test_a_dead_stage_fails_liveness(live: LiveAssets, camera: RtspServer, redis_server: RedisServer) -> None:
    engines = engines_for(live)
    broken = {t: BrokenEngine(e) for t, e in engines.items()}
    cfg = make_config(live, [{"id": "cam", "uri": camera.url("cam")}], [redis_server.url])
    with LivePipeline(cfg, broken) as lp:
        wait_for(lambda: lp.probe("/healthz")[0] == 503, 30, "liveness failing")
        _, body = lp.probe("/healthz")
        assert body["ok"] is False and "infer" in body["dead_stages"]
        assert "illegal memory access" in body["fatal"]
        assert lp.probe("/readyz")[0] == 503


def test_readiness_before_start_and_after_a_file_job(live: LiveAssets, redis_server: RedisServer) -> None:
    engines = engines_for(live)
    cfg = make_config(live, [{"id": "clip", "uri": str(live.clip)}], [redis_server.url])
    lp = LivePipeline(cfg, engines)
    alive, ready, detail = lp.pipeline.health()
    assert alive and not ready and detail["sources"] == {"clip": "idle"}  # built, not started
    with lp:
        wait_for(lambda: not lp.pipeline.running, 60, "the clip to finish")
        alive, ready, detail = lp.pipeline.health()
        assert alive and detail["sources"] == {"clip": "stopped"}
    assert lp.report is not None and lp.report.published == 45


def test_health_bodies_never_show_a_redis_password_given_in_the_query(tmp_path_factory: pytest.TempPathFactory,
                                                                      tmp_path: Path) -> None:
    live = session_live_assets(tmp_path_factory)
    secret = "S3cr3t-pw"
    srv = RedisServer(tmp_path / "redis", extra=["--requirepass", secret])
    srv.start()
    try:
        sink = f"redis://127.0.0.1:{srv.port}/0?password={secret}"  # redis-py reads the password from the query
        cfg = make_config(live, [{"id": "clip", "uri": str(live.clip), "loop": True, "realtime": True}], [sink])
        with LivePipeline(cfg, engines_for(live)) as lp:
            wait_for(lambda: lp.get("/readyz")[0] == 200, 60, "the run to become ready")
            for path in ("/readyz", "/healthz"):
                code, body = lp.get(path)
                assert code == 200 and secret not in body, body
                assert json.loads(body)["sinks"] == {f"redis://127.0.0.1:{srv.port}/0?password=***": True}
    finally:
        srv.stop()


def test_health_bodies_never_show_a_password() -> None:
    import urllib.error
    import urllib.request

    from pipeline.metrics import Metrics

    m = Metrics()
    detail = {"fatal": "camera 'x' at rtsp://admin:cam@Secret9@10.0.0.5/live broke", "sinks": {"redis": False}}
    port = m.serve(0, "127.0.0.1", lambda: (True, False, detail))
    try:
        for path in ("/healthz", "/readyz"):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read().decode()
            except urllib.error.HTTPError as e:
                body = e.read().decode()
            assert "Secret9" not in body and "admin:***@10.0.0.5" in body
    finally:
        m.close()
