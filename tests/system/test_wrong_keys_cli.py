"""A key of the wrong type (another program's, or a hand edit) costs one line naming it, never the whole
command: status, show and snapshot print the rest and exit 1. Names read from Redis cannot drive the terminal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.entries import split_mask_entry
from tests.support.servers import RedisServer, cli

pytestmark = pytest.mark.slow

WAY_OUT = "DEL the key or use another --redis-prefix"


def _good_job(rd: object, jid: str, **fields: str) -> None:
    rd.hset(f"dpt:job:{jid}", mapping={"state": "done", "uri": f"/data/{jid}.mp4", "submitted": "1", **fields})  # type: ignore[attr-defined]
    rd.zadd("dpt:jobs:all", {jid: 6})  # type: ignore[attr-defined]


def test_status_lists_every_readable_job_and_one_line_per_bad_key(redis_server: RedisServer) -> None:
    rd = redis_server.client()
    rd.set("dpt:job:broken", "x")
    rd.zadd("dpt:jobs:all", {"broken": 5, b"\xff\x1b[2J": 7})
    _good_job(rd, "good")
    _good_job(rd, "busy", state="running", worker="w\x1b[31mRED\x1b[0m\x07", heartbeat="1e308", attempts="inf")
    rd.hset("dpt:stream:odd:progress", "frame", "abc")
    _good_job(rd, "odd")
    p = cli("status", "--redis", redis_server.url, timeout=60)
    assert p.returncode == 1, p.stderr
    assert p.stderr.splitlines() == [
        "dptstream: error: Redis key dpt:jobs:all lists '\\xff\\x1b[2J', which is no job id: ZREM it from "
        "dpt:jobs:all",
        "dptstream: error: job 'broken': Redis key dpt:job:broken holds a string, not a hash (reading it): "
        f"{WAY_OUT}",
        "dptstream: error: job 'odd': Redis key dpt:stream:odd:progress has a corrupt resume point (frame 'abc' is "
        "not a frame index): publish from frame 0 with --no-resume, or DEL the key"]
    rows = {ln.split()[0]: ln for ln in p.stdout.splitlines()[2:]}
    assert set(rows) == {"good", "busy"}, p.stdout
    assert "\x1b" not in p.stdout and "\x07" not in p.stdout and "w\\x1b[31mRED\\x1b[0m\\x07" in rows["busy"]
    j = cli("status", "--redis", redis_server.url, "--json", timeout=60)
    assert j.returncode == 1 and len(j.stderr.splitlines()) == 3
    data = json.loads(j.stdout)
    assert {x["id"] for x in data["jobs"]} == {"good", "busy"} and len(data["problems"]) == 3
    rd.set("dpt:jobs:all", "x")
    rd.set("dpt:workers", "x")
    p = cli("status", "--redis", redis_server.url, timeout=60)
    assert p.returncode == 1 and p.stderr.splitlines() == [
        f"dptstream: error: Redis key dpt:jobs:all holds a string, not a zset (listing the jobs): {WAY_OUT}",
        f"dptstream: error: Redis key dpt:workers holds a string, not a zset (counting the workers): {WAY_OUT}"]
    assert "0 job(s)" in p.stdout and "? worker(s) active" in p.stdout


def test_show_and_snapshot_name_a_wrong_typed_streams_set_and_print_the_rest(redis_server: RedisServer,
                                                                             tmp_path: Path) -> None:
    rd = redis_server.client()
    entry = split_mask_entry(54, 96, 7, {"kind": "relative_inverse", "p05": 1.0, "p50": 2.0, "p95": 3.0},
                             frame=b"3", pts=b"0.1", mask_w=b"96", mask_h=b"54", latency_ms=b"5")
    rd.xadd("dpt:stream:cam:frames", entry)
    rd.set("dpt:streams", "x")
    line = f"dptstream: error: Redis key dpt:streams holds a string, not a set (listing the streams): {WAY_OUT}"
    p = cli("snapshot", "nope", "--redis", redis_server.url, "-o", str(tmp_path / "n.png"), timeout=60)
    assert p.returncode == 1 and p.stderr.splitlines()[0] == line, p.stderr
    assert p.stderr.splitlines()[1].startswith("dptstream: error: no entries for stream 'nope'")
    s = cli("show", "--redis", redis_server.url, timeout=60)
    assert s.returncode == 1 and s.stderr.splitlines() == [line], s.stderr
    s = cli("show", "cam", "--redis", redis_server.url, timeout=60)
    assert s.returncode == 0 and s.stdout.startswith("cam frame 3"), s.stderr
    # the picture is written without what a wrong-typed key would have added (class names, active zones)
    rd.set("dpt:meta", "x")
    rd.set("dpt:alerts:active", "x")
    out = tmp_path / "cam.png"
    p = cli("snapshot", "cam", "--redis", redis_server.url, "-o", str(out), timeout=60)
    assert p.returncode == 1 and p.stderr.splitlines() == [
        "dptstream: error: Redis key dpt:meta holds a string, not a hash (reading the labels and zones): "
        f"{WAY_OUT}",
        "dptstream: error: Redis key dpt:alerts:active holds a string, not a hash (reading the active alerts): "
        f"{WAY_OUT}"], p.stderr
    assert out.stat().st_size > 0 and p.stdout.startswith(f"{out}: cam frame 3")


def test_show_escapes_a_stream_name_holding_control_characters(redis_server: RedisServer) -> None:
    rd = redis_server.client()
    rd.sadd("dpt:streams", "a\x1b]0;pwned\x07")
    p = cli("show", "--redis", redis_server.url, timeout=60)
    assert p.returncode == 1 and p.stderr.splitlines() == [
        "dptstream: error: Redis key dpt:streams lists 'a\\x1b]0;pwned\\x07', which is no stream id: SREM it "
        "from dpt:streams"]


@pytest.mark.parametrize("args", [["status", "--limit", "-1"], ["view", "--stale-after", "1e308"],
                                  ["view", "--write-timeout", "1e308"]])
def test_out_of_range_numbers_are_usage_errors(redis_server: RedisServer, args: list[str]) -> None:
    p = cli(*args, "--redis", redis_server.url, timeout=60)
    assert p.returncode == 2 and "Invalid value" in p.stderr, p.stderr
