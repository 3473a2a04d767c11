"""The camera fleet: ``dptstream node`` processes sharing cameras from the Redis registry, with real RTSP cameras,
a real redis-server and real signals (SIGKILL, SIGSTOP/SIGCONT, SIGTERM, a Redis restart).

Per stream the entries carry the writing node and its fencing token: tokens never go down along a stream and
each token belongs to one node, which is "never two writers" read from what was written."""

from __future__ import annotations

import itertools
import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.fleet import Fleet, newest_ms, now_ms, owners
from tests.support.live import FPS, H, LiveAssets, W, need_rtsp, session_live_assets, wait_for
from tests.support.rtsp_server import RtspServer
from tests.support.servers import RedisServer

CAMS = [f"cam{i}" for i in range(7)]
START_S = 120  # three nodes loading torch on two busy cores


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> LiveAssets:
    need_rtsp()
    return session_live_assets(tmp_path_factory)


@pytest.fixture(scope="module")
def cameras(live: LiveAssets, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RtspServer]:
    d = tmp_path_factory.mktemp("fleet-rtsp")
    srv = RtspServer(live.raw, W, H, [f"{c}:fps=6" for c in CAMS], fps=FPS, log=d / "rtsp.log")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def fleet(live: LiveAssets, redis_server: RedisServer, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(live, redis_server.url, tmp_path)
    yield f
    f.stop_all()


def import_cameras(fleet: Fleet, cameras: RtspServer, cams: list[str], tmp_path: Path) -> None:
    p = tmp_path / "cameras.yaml"
    p.write_text(yaml.safe_dump({"sources": [{"id": c, "uri": cameras.url(c)} for c in cams]}))
    r = fleet.cli("cameras", "import", str(p))
    assert r.returncode == 0, r.stderr


def entries(client: Any, cam: str) -> list[tuple[int, float, str, int, int]]:
    """(entry ms, ts, node, token, frame) of each entry of ``cam``, in stream order."""
    return [(int(i.decode().split("-")[0]), float(f[b"ts"]), f[b"node"].decode(), int(f[b"fence"]),
             int(f[b"frame"])) for i, f in client.xrange(f"dpt:stream:{cam}:frames")]


def assert_one_writer_at_a_time(client: Any, cams: list[str]) -> None:
    for cam in cams:
        es = entries(client, cam)
        tokens = [e[3] for e in es]
        assert tokens == sorted(tokens), f"{cam}: a stale token was written after a newer one"
        by_token: dict[int, set[str]] = {}
        for _, _, node, tok, _ in es:
            by_token.setdefault(tok, set()).add(node)
        assert all(len(n) == 1 for n in by_token.values()), (cam, by_token)
        ts = [e[1] for e in es]
        assert all(b > a for a, b in itertools.pairwise(ts)), f"{cam}: ts went back"
        frames = [e[4] for e in es]  # a camera that moves continues its frame numbers
        assert all(b > a for a, b in itertools.pairwise(frames)), f"{cam}: frame numbers went back"


def running_everywhere(client: Any, cams: list[str], since_ms: int = 0) -> dict[str, str] | None:
    """Camera -> owner once every camera has an owner and an entry from that owner newer than ``since_ms``."""
    own = owners(client, cams)
    if len(own) < len(cams):
        return None
    for cam in cams:
        last = client.xrevrange(f"dpt:stream:{cam}:frames", count=1)
        if not last or last[0][1].get(b"node", b"").decode() != own[cam] \
                or int(last[0][0].decode().split("-")[0]) <= since_ms:
            return None
    return own


@pytest.mark.slow
def test_nodes_share_cameras_take_new_ones_drop_removed_ones_and_take_over_from_a_killed_node(
        fleet: Fleet, cameras: RtspServer, redis_server: RedisServer, tmp_path: Path) -> None:
    c = redis_server.client()
    six = CAMS[:6]
    import_cameras(fleet, cameras, six, tmp_path)
    for n in ("n1", "n2", "n3"):
        fleet.start(n)
    def balanced(cams: list[str], nodes: set[str]) -> dict[str, str] | None:
        """The owners once every camera streams and every node has joined (nodes start at different times)."""
        own = running_everywhere(c, cams)
        if own is None or set(own.values()) != nodes:
            return None
        fair = len(cams) / len(nodes)  # 2 ± 1 for six cameras on three nodes
        return own if all(abs(n - fair) <= 1 for n in Counter(own.values()).values()) else None

    own = wait_for(lambda: balanced(six, {"n1", "n2", "n3"}), START_S, "all six cameras streaming on three nodes")
    loads = Counter(own.values())
    assert all(1 <= v <= 3 for v in loads.values()), loads
    def lists_its_cameras(name: str) -> bool:
        mine = sorted(k for k, n in owners(c, six).items() if n == name)
        return (fleet.nodes[name].ready() or {}).get("cameras") == mine

    for name in ("n1", "n2", "n3"):  # /readyz lists what each node runs
        wait_for(lambda: lists_its_cameras(name), 10, f"{name} /readyz")  # noqa: B023
    listed = fleet.cli("cameras", "list", "--json", "--lease-s", str(fleet.lease_s))
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {r["id"]: r["node"] for r in rows} == owners(c, six)
    assert all(r["state"] == "running" and r["fps"] > 0 and r["age_s"] is not None for r in rows), rows

    # a node with other checkpoints refuses to join, in one line, before loading anything
    odd = fleet.start("odd", "-m", f"segmentation={fleet.assets.depth}")
    assert odd.proc.wait(60) == 2
    assert "checkpoints differ from the fleet's" in odd.stderr and "Traceback" not in odd.stderr

    # a seventh camera: streams at once, and nothing else moves
    before = dict(own)
    r = fleet.cli("cameras", "add", "cam6", cameras.url("cam6"))
    assert r.returncode == 0, r.stderr
    own7 = wait_for(lambda: running_everywhere(c, CAMS), 30, "cam6 streaming")
    assert all(own7[k] == before[k] for k in six)

    # removed: its node stops it (drained) and no entry follows
    r = fleet.cli("cameras", "remove", "cam6")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: "cam6" not in owners(c, ["cam6"]), 10, "cam6 released")
    wait_for(lambda: now_ms(c) - newest_ms(c, "cam6") > 1500, 30, "cam6's decoded frames drained")
    n_after = c.xlen("dpt:stream:cam6:frames")
    time.sleep(1.5)
    assert c.xlen("dpt:stream:cam6:frames") == n_after

    # SIGKILL: the killed node's cameras publish from the others
    victim = max(loads, key=lambda n: (loads[n], n))
    lost = [k for k, n in owners(c, six).items() if n == victim]
    fleet.nodes[victim].signal(signal.SIGKILL)
    fleet.nodes[victim].proc.wait(10)
    killed_at = now_ms(c)
    after = wait_for(lambda: running_everywhere(c, six, killed_at), 30, "the killed node's cameras elsewhere")
    assert all(after[k] != victim for k in lost)
    survivors = Counter(after.values())
    assert set(survivors) <= {"n1", "n2", "n3"} - {victim} and all(v == 3 for v in survivors.values()), survivors
    took_over = sum(fleet.nodes[n].metric("dptstream_fleet_handovers_total", reason="node_lost")
                    for n in survivors)
    assert took_over == len(lost)
    assert_one_writer_at_a_time(c, six)

    # the registry key vanishing (a flushed Redis) is not "remove everything": cameras keep running, one warning
    c.delete("dpt:cameras")
    gone_at = now_ms(c)
    time.sleep(4 * 0.25 + 1)  # several reconciles
    assert running_everywhere(c, six, gone_at) == after
    for n in survivors:
        assert fleet.nodes[n].stderr.count("the registry dpt:cameras is gone") == 1


@pytest.mark.slow
def test_a_paused_node_is_fenced_redis_restarts_and_sigterm_hands_over(
        live: LiveAssets, cameras: RtspServer, tmp_path: Path) -> None:
    srv = RedisServer(tmp_path / "redis-aof", extra=["--appendonly", "yes"])
    srv.start()
    fleet = Fleet(live, srv.url, tmp_path)
    try:
        c = srv.client()
        four = CAMS[:4]
        import_cameras(fleet, cameras, four, tmp_path)
        fleet.start("n1")
        fleet.start("n2")
        own = wait_for(lambda: (o := running_everywhere(c, four)) and Counter(o.values()) == {"n1": 2, "n2": 2} and o,
                   START_S, "four cameras streaming, two on each node")
        assert Counter(own.values()) == {"n1": 2, "n2": 2}

        # SIGSTOP past three leases: n1 takes over; n2 wakes, writes nothing for what it lost, counts the drops
        n2 = fleet.nodes["n2"]
        lost = sorted(k for k, n in own.items() if n == "n2")
        n2.signal(signal.SIGSTOP)
        time.sleep(3 * fleet.lease_s)
        stopped_at = now_ms(c)
        wait_for(lambda: running_everywhere(c, lost, stopped_at), 30, "n1 running n2's cameras")
        n2.signal(signal.SIGCONT)
        wait_for(lambda: n2.metric("dptstream_frames_dropped_total", reason="fenced") > 0, 20, "fenced drops on n2")
        settled = wait_for(lambda: (o := running_everywhere(c, four, now_ms(c) - 500)) and
                       Counter(o.values()) == {"n1": 2, "n2": 2} and o, 30, "n2 back with its fair share")
        moved = [k for k in four if settled[k] != "n1"]
        assert len(moved) <= 2
        assert_one_writer_at_a_time(c, four)

        # Redis restarts (append-only): every camera is still run by exactly one node
        srv.stop()
        time.sleep(0.5)
        srv.start()
        back = now_ms(c)
        after = wait_for(lambda: running_everywhere(c, four, back + 1000), 30, "cameras streaming after the restart")
        held = {n: set((node.ready() or {}).get("cameras", [])) for n, node in fleet.nodes.items()}
        assert held["n1"].isdisjoint(held["n2"]) and held["n1"] | held["n2"] == set(four), held
        assert all(k in held[after[k]] for k in four)

        # SIGTERM: n2 lets go at once and exits after draining; n1 streams its cameras
        gone = sorted(k for k, n in after.items() if n == "n2")
        n2.signal(signal.SIGTERM)
        term = now_ms(c)
        assert n2.proc.wait(30) == 0, n2.stderr
        wait_for(lambda: running_everywhere(c, gone, term), 15, "n1 running n2's cameras after SIGTERM")
        assert fleet.nodes["n1"].metric("dptstream_fleet_handovers_total", reason="released") >= len(gone)
        assert_one_writer_at_a_time(c, four)
        assert all(newest_ms(c, k) > term for k in four)
    finally:
        fleet.stop_all()
        srv.stop()


def test_cameras_commands_refuse_bad_input_and_never_show_secrets(redis_server: RedisServer, tmp_path: Path) -> None:
    fleet = Fleet(LiveAssets(tmp_path, tmp_path, tmp_path, tmp_path), redis_server.url, tmp_path)  # no node here
    c = redis_server.client()
    ok = fleet.cli("cameras", "add", "door", "rtsp://admin:${DOOR_PASS}@10.0.0.5:554/s1", "-o", "rtsp_transport=udp")
    assert ok.returncode == 0, ok.stderr
    stored = c.hget("dpt:cameras", "door").decode()
    assert "${DOOR_PASS}" in stored and '"rtsp_transport": "udp"' in stored  # expanded on each node, not here
    ok = fleet.cli("cameras", "add", "yard", "rtsp://admin:hunter2@10.0.0.6/s1")
    assert ok.returncode == 0
    for args, code, says in [
        (("cameras", "add", "door", "rtsp://10.0.0.9/x"), 2, "already in the registry: pass --replace"),
        (("cameras", "add", "x", "ftp://10.0.0.9/x", "-o", "live=true"), 2, "unsupported scheme"),
        (("cameras", "remove", "ghost"), 1, "no camera 'ghost' in the registry"),
    ]:
        r = fleet.cli(*args)
        assert r.returncode == code, (args, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("dptstream: error:")]
        assert len(lines) == 1 and says in lines[0] and "Traceback" not in r.stderr, (args, r.stderr)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"sources": [{"id": "a", "uri": "rtsp://h/a"}, {"id": "b", "uri": "ftp://h/b"}]}))
    r = fleet.cli("cameras", "import", str(bad))
    assert r.returncode == 2 and "bad.yaml: sources[1]: camera 'b': uri: unsupported scheme" in r.stderr, r.stderr
    assert c.hget("dpt:cameras", "a") is None  # nothing written
    assert c.hget("dpt:cameras", "door").decode() == stored
    shown = fleet.cli("cameras", "list")
    assert shown.returncode == 0 and "door" in shown.stdout and "yard" in shown.stdout
    assert "hunter2" not in shown.stdout + shown.stderr
    r = fleet.cli("cameras", "remove", "yard")
    assert r.returncode == 0 and c.hget("dpt:cameras", "yard") is None


def test_view_camera_api_lists_adds_and_removes_behind_its_token(redis_server: RedisServer) -> None:
    """The view's app (its token middleware included) on a real socket, against a real Redis."""
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from pipeline.view.hub import Hub, ViewSettings
    from pipeline.view.server import build_app

    c = redis_server.client()
    token = "tok-" + "5" * 28
    entry = {"id": "gate", "uri": "rtsp://admin:hunter2@10.0.0.7/s1", "rtsp_transport": "udp"}

    async def call(client: TestClient, method: str, path: str, body: Any = None, tok: str | None = None
                   ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        r = await client.request(method, path, json=body, headers=headers)
        return r.status, (await r.json() if r.content_type == "application/json" else await r.text())

    async def scenario() -> None:
        for tok in (None, token):
            settings = ViewSettings(redis_server.url, token=tok)
            async with TestClient(TestServer(build_app(Hub(settings), tok))) as client:
                code, body = await call(client, "POST", "/api/cameras", entry, tok)
                if tok is None:  # no token, no writes, even on loopback
                    assert code == 403 and "need the view's token" in body["error"]
                    assert (await call(client, "DELETE", "/api/cameras/gate"))[0] == 403
                    assert c.hget("dpt:cameras", "gate") is None
                    continue
                assert code == 201, body
                assert (await call(client, "POST", "/api/cameras", entry))[0] == 401  # without the token
                assert (await call(client, "POST", "/api/cameras", entry, tok))[0] == 409
                assert (await call(client, "POST", "/api/cameras", {**entry, "replace": True}, tok))[0] == 200
                code, body = await call(client, "POST", "/api/cameras", {"id": "x", "uri": "ftp://h/x"}, tok)
                assert code == 400 and "unsupported scheme" in body["error"]
                code, body = await call(client, "GET", "/api/cameras", tok=tok)
                assert [r["id"] for r in body["cameras"]] == ["gate"] and "hunter2" not in str(body)
                assert body["cameras"][0]["state"] == "unassigned"
                assert (await call(client, "DELETE", "/api/cameras/gate", tok=tok))[0] == 200
                assert (await call(client, "DELETE", "/api/cameras/gate", tok=tok))[0] == 404
                assert c.hget("dpt:cameras", "gate") is None

    asyncio.run(scenario())
