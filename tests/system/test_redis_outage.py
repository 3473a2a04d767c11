"""Redis outages and secured Redis: a real redis-server killed and restarted under a running pipeline,
and a redis-server that speaks only TLS with an ACL user."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.metrics import Metrics
from pipeline.sinks import RedisSink, SinkError
from tests.support.live import (
    FPS,
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
from tests.support.servers import RedisServer, cli, cli_process, free_port, model_args, one_error_line

pytestmark = pytest.mark.slow

DURABLE = ["--appendonly", "yes", "--appendfsync", "always"]  # a restart keeps what was acknowledged


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> LiveAssets:
    return session_live_assets(tmp_path_factory)


@pytest.fixture(scope="module")
def engines(live: LiveAssets) -> dict[str, Any]:
    return engines_for(live)


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis", extra=DURABLE)
    srv.start()
    yield srv
    srv.stop()


def final(lp: LivePipeline, name: str, **labels: str) -> float:
    total = 0.0
    for fam in lp.metrics.registry.collect():
        for s in fam.samples:
            if s.name == name and set(labels.items()) <= set(s.labels.items()):
                total += s.value
    return total


def test_redis_killed_and_restarted_mid_file_job_publishes_every_frame_exactly_once(
        live: LiveAssets, engines: dict[str, Any], durable_redis: RedisServer, tmp_path: Path) -> None:
    from pipeline.sample import make_clip

    n = 150
    clip = make_clip(tmp_path / "job.mp4", frames=n, width=W, height=H, fps=FPS, seed=4)
    cfg = make_config(live, [{"id": "job", "uri": str(clip)}], [durable_redis.url],
                      redis={"retry_max_s": 0.5})
    r = durable_redis.client()
    with LivePipeline(cfg, engines) as lp:
        wait_for(lambda: r.xlen("dpt:stream:job:frames") >= 20, 60, "the job under way")
        durable_redis.stop()  # Redis dies mid-run
        wait_for(lambda: lp.metric("dptstream_sink_errors_total") >= 1, 10, "the sink noticing")
        code, body = lp.probe("/readyz")
        assert code == 503 and list(body["sinks"].values()) == [False]
        assert lp.probe("/healthz")[0] == 200  # alive: waiting is not dying
        stalled = lp.metric("dptstream_frames_total", stream="job", stage="published")
        time.sleep(2)
        # the job waits instead of dropping: nothing is published and nothing is lost meanwhile
        assert lp.metric("dptstream_frames_total", stream="job", stage="published") == stalled
        assert lp.metric("dptstream_frames_dropped_total", stream="job") == 0
        durable_redis.start()  # same port, same data directory
        wait_for(lambda: not lp.pipeline.running, 120, "the job to finish")
    report = lp.report
    assert report is not None and report.fatal is None
    assert report.published == n
    frames = [int(e["frame"]) for e in entries(durable_redis.client(), "job")]
    assert frames == list(range(n))  # every frame, once, in order
    assert final(lp, "dptstream_sink_errors_total") >= 1
    assert final(lp, "dptstream_frames_dropped_total") == 0
    assert durable_redis.client().hget("dpt:meta", "schema") == b"1"


def test_live_results_wait_in_a_bounded_buffer_while_redis_is_away(
        live: LiveAssets, engines: dict[str, Any], durable_redis: RedisServer, tmp_path: Path) -> None:
    need_rtsp()
    cam = RtspServer(live.raw, W, H, ["cam"], fps=FPS, log=tmp_path / "rtsp.log")
    cam.start()
    try:
        cfg = make_config(live, [{"id": "cam", "uri": cam.url("cam")}], [durable_redis.url],
                          redis={"buffer": 20, "retry_max_s": 0.5},
                          live={"reconnect_initial_s": 0.2, "reconnect_max_s": 1.0})
        with LivePipeline(cfg, engines) as lp:
            wait_for(lambda: lp.metric("dptstream_frames_total", stream="cam", stage="published") >= 10, 30,
                     "first frames")
            durable_redis.stop()
            t_down = time.time()
            wait_for(lambda: lp.metric("dptstream_sink_buffer_depth") >= 20, 20, "the buffer filling up")
            wait_for(lambda: lp.metric("dptstream_frames_dropped_total", stream="cam",
                                       reason="sink_buffer_full") >= 10, 20, "drops past the buffer")
            assert lp.metric("dptstream_sink_buffer_depth") == 20  # bounded
            assert lp.metric("dptstream_stream_up", stream="cam") == 1  # the camera never waited
            code, body = lp.probe("/readyz")
            assert code == 503 and body["sources"] == {"cam": "streaming"}
            t_up = time.time()
            durable_redis.start()
            wait_for(lambda: lp.metric("dptstream_sink_buffer_depth") == 0, 20, "the buffer written out")
            wait_for(lambda: lp.probe("/readyz")[0] == 200, 10, "ready again")
            after = lp.metric("dptstream_frames_total", stream="cam", stage="published")
            wait_for(lambda: lp.metric("dptstream_frames_total", stream="cam", stage="published") >= after + 10,
                     20, "frames flowing again")
    finally:
        cam.stop()
    es = entries(durable_redis.client(), "cam")
    frames = [int(e["frame"]) for e in es]
    assert frames == sorted(set(frames))  # no frame twice, decode order kept
    held = [e for e in es if t_down + 0.5 < float(e["ts"]) < t_up]
    # the newest results of the outage, written when Redis came back: the 20 the buffer held, plus at most
    # what was still inside the pipeline's bounded queues (decoded before t_up, published after)
    q = cfg.queues
    in_flight = q.decoded + q.prepared + q.inferred + q.results + cfg.engine.batch_size
    assert 10 <= len(held) <= 20 + in_flight
    dec = final(lp, "dptstream_frames_total", stream="cam", stage="decoded")
    pub = final(lp, "dptstream_frames_total", stream="cam", stage="published")
    drop = final(lp, "dptstream_frames_dropped_total", stream="cam")
    assert dec == pub + drop and final(lp, "dptstream_frames_dropped_total", reason="sink_buffer_full") >= 10


# ------------------------------------------------------------------------------------------------------
# TLS + ACL
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(tmp_path_factory.mktemp("tls"))


ACL_PW = "Acl-Pass-6622"


@pytest.fixture
def tls_redis(tmp_path: Path, certs: Path) -> Iterator[RedisServer]:
    port = free_port()
    srv = RedisServer(tmp_path / "redis-tls", port=port, extra=[
        "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(certs / "server.crt"),
        "--tls-key-file", str(certs / "server.key"), "--tls-ca-cert-file", str(certs / "ca.crt"),
        "--tls-auth-clients", "yes", "--user", "default", "off", "--user", "dpt", "on", f">{ACL_PW}",
        "~*", "&*", "+@all"])
    srv.start()
    yield srv
    srv.stop()


def _tls_client(srv: RedisServer, certs: Path) -> Any:
    import redis

    return redis.Redis(host="127.0.0.1", port=srv.port, ssl=True, ssl_ca_certs=str(certs / "ca.crt"),
                       ssl_certfile=str(certs / "client.crt"), ssl_keyfile=str(certs / "client.key"),
                       username="dpt", password=ACL_PW)


def test_tls_redis_with_an_acl_user_and_client_certificate(live: LiveAssets, engines: dict[str, Any],
                                                            tls_redis: RedisServer, certs: Path) -> None:
    url = f"rediss://dpt:{ACL_PW}@127.0.0.1:{tls_redis.port}/0"
    tls = {"ca_file": str(certs / "ca.crt"), "cert_file": str(certs / "client.crt"),
           "key_file": str(certs / "client.key")}
    cfg = make_config(live, [{"id": "clip", "uri": str(live.clip)}], [url], redis=tls)
    with LivePipeline(cfg, engines) as lp:
        wait_for(lambda: not lp.pipeline.running, 60, "the clip to finish")
        assert lp.pipeline.health()[2]["sinks"] == {f"rediss://dpt:***@127.0.0.1:{tls_redis.port}/0": True}
    assert lp.report is not None and lp.report.published == 45
    c = _tls_client(tls_redis, certs)
    assert c.xlen("dpt:stream:clip:frames") == 45
    assert c.acl_whoami() == "dpt"


@pytest.mark.parametrize("case", ["wrong_ca", "wrong_password", "plain_client"])
def test_tls_redis_misconfigured_gives_one_clear_line_without_the_password(
        live: LiveAssets, tls_redis: RedisServer, certs: Path, case: str) -> None:
    tls = {"ca_file": str(certs / "ca.crt"), "cert_file": str(certs / "client.crt"),
           "key_file": str(certs / "client.key")}
    url = f"rediss://dpt:{ACL_PW}@127.0.0.1:{tls_redis.port}/0"
    expect = {"wrong_ca": "certificate verify failed", "wrong_password": "refused the credentials",
              "plain_client": "cannot reach Redis"}[case]
    if case == "wrong_ca":
        tls["ca_file"] = str(certs / "other-ca.crt")
    elif case == "wrong_password":
        url = url.replace(ACL_PW, "Bad-Pass-0101")
    else:
        url = url.replace("rediss://", "redis://")
    cfg = make_config(live, [], [url], redis=tls)
    sink = RedisSink(url, cfg, Metrics())
    with pytest.raises(SinkError) as e:
        sink.open()
    msg = str(e.value)
    assert expect in msg.lower() or expect in msg, msg
    assert ACL_PW not in msg and "Bad-Pass-0101" not in msg
    assert "\n" not in msg


def test_reachable_probe_is_fast_when_redis_is_gone(live: LiveAssets, durable_redis: RedisServer) -> None:
    cfg = make_config(live, [], [durable_redis.url])
    sink = RedisSink(durable_redis.url, cfg, Metrics())
    sink.open()
    assert sink.reachable()
    durable_redis.stop()
    time.sleep(1.1)  # past the probe's cache
    t0 = time.monotonic()
    assert not sink.reachable()
    assert time.monotonic() - t0 < 2
    durable_redis.start()
    time.sleep(1.1)
    assert sink.reachable()
    sink.close()


# -- readers: `alerts --follow` outlives an outage; a Redis that is not there is a runtime failure (exit 1) ------

def test_alerts_follow_outlives_a_redis_restart_and_unreachable_redis_exits_1(redis_server: RedisServer) -> None:
    import signal
    import subprocess

    from tests.support.servers import cli, cli_process

    alert = {"rule": "busy-door", "zone": "door", "stream": "cam", "state": "start", "frame": "7", "ts": "1.0",
             "coverage": "0.5"}
    with cli_process("alerts", "--follow", "-n", "0", "--redis", redis_server.url, stdout=subprocess.PIPE) as follow:
        try:
            time.sleep(4)  # blocking on the stream
            redis_server.stop()
            time.sleep(3)
            assert follow.poll() is None, follow.communicate()[1]  # still following
            redis_server.start()  # empty, same port
            time.sleep(2.5)
            redis_server.client().xadd("dpt:alerts", alert)
            assert follow.stdout is not None
            got = follow.stdout.readline()
            assert "cam busy-door START" in got and "frame 7" in got
        finally:
            follow.send_signal(signal.SIGINT)
            _, err = follow.communicate(timeout=30)
    assert "is unreachable" in err and "reachable again" in err and "Traceback" not in err
    gone = f"redis://127.0.0.1:{free_port()}/0"
    for args in (["alerts"], ["show"], ["status"]):
        p = cli(*args, "--redis", gone, timeout=60)
        assert p.returncode == 1, (args, p.stderr)
        assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


@pytest.mark.parametrize("signals", [1, 2])
def test_sigterm_while_redis_is_down_exits_and_counts_what_was_not_written(
        assets: dict[str, Path], tmp_path: Path, redis_server: RedisServer, signals: int) -> None:
    from pipeline.sample import make_clip

    clip = make_clip(tmp_path / "slow.mp4", frames=240, width=320, height=180, seed=6)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"sources: [{{id: slow, uri: '{clip}', realtime: true}}]\n"
                   f"sinks: ['{redis_server.url}']\nredis: {{retry_max_s: 1.0}}\nmetrics: {{port: null}}\n")
    with cli_process("run", str(cfg), *model_args(assets)) as proc:
        r = redis_server.client()
        deadline = time.time() + 120
        while time.time() < deadline and r.xlen("dpt:stream:slow:frames") < 5:
            time.sleep(0.1)
        assert r.xlen("dpt:stream:slow:frames") >= 5
        redis_server.stop()
        time.sleep(1.5)  # frames keep being decoded; the publish stage now waits for Redis
        proc.send_signal(signal.SIGTERM)
        if signals == 2:
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
        # exits within retry_max_s (1 s) plus a few seconds of joins: the bound is generous, a hang is not
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err
    line = one_error_line(err)
    assert "results not written" in line and "rerun resumes" in line, err
    n = int(line.split(" results not written")[0].rsplit(" ", 1)[1])
    assert n >= 1
    assert proc.returncode == (130 if signals == 2 else 1), err


def test_a_redis_password_in_the_query_string_is_hidden_in_logs_and_errors(assets: dict[str, Path],
                                                                            tmp_path: Path) -> None:
    secret = "S3cr3t-pw"
    srv = RedisServer(tmp_path / "redis", extra=["--requirepass", secret])
    srv.start()
    try:
        url = f"redis://127.0.0.1:{srv.port}/0?password={secret}"
        p = cli("run", "-s", f"a={assets['clip360']}", "--sink", url, *model_args(assets), "--metrics-port", "-1")
        assert p.returncode == 0, p.stderr
        assert secret not in p.stdout + p.stderr
        assert f"redis://127.0.0.1:{srv.port}/0?password=***" in p.stderr  # the INFO line "sinks: ..."
    finally:
        srv.stop()
    for args in (["show", "--redis", url], ["show", "--redis", f"redis://127.0.0.1:1/0?password={secret}"]):
        s = cli(*args, timeout=60)
        assert s.returncode != 0
        assert secret not in s.stdout + s.stderr and "password=***" in one_error_line(s.stderr)


def test_an_acl_without_channels_stops_the_run_counting_exactly_what_was_not_written(
        assets: dict[str, Path], redis_server: RedisServer) -> None:
    """Redis 7 gives a new ACL user no channel: the write script's PUBLISH is refused after its XADD, so the
    first frame is in Redis although its reply is an error. The line names the way out, and its count of results
    not written is what Redis lacks."""
    r = redis_server.client()
    r.execute_command("ACL", "SETUSER", "writer", "on", ">writer-pass-1", "~*", "resetchannels", "+@all")
    url = f"redis://writer:writer-pass-1@127.0.0.1:{redis_server.port}/0"
    p = cli("run", "-s", f"cam={assets['clip360']}", *model_args(assets), "--sink", url, "--metrics-port", "-1")
    assert p.returncode == 1, p.stderr
    line = one_error_line(p.stderr)
    assert "may not publish" in line and "ACL SETUSER" in line and "writer-pass-1" not in p.stderr, line
    decoded = int(p.stderr.split("cam: ", 1)[1].split(" frames decoded", 1)[0])
    written = r.xlen("dpt:stream:cam:frames")
    assert 0 < written < decoded
    assert f"; {decoded - written} results not written" in line, line
