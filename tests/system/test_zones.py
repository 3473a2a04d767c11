"""Zones and rules end to end: `dptstream run` on a real-content clip into a real redis-server. Per-zone coverage
is checked against the published mask PNG and the polygon; the alerts stream against the debounce of the
published per-frame series, also across a SIGKILL and a rerun; bad zone/rule configs give one line each."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from scipy.ndimage import binary_dilation, binary_erosion
from skimage.draw import polygon as draw_polygon

from tests.support.servers import ROOT, RedisServer, cli, model_args

pytestmark = pytest.mark.slow

DOOR = [[0.10, 0.30], [0.55, 0.25], [0.60, 1.0], [0.05, 0.95]]
BAY = [[0.40, 0.05], [0.95, 0.05], [0.95, 0.60]]  # overlaps DOOR
FOR_FRAMES, CLEAR_FRAMES = 2, 3


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.sample import make_clip

    return make_clip(tmp_path_factory.mktemp("zones") / "pan.mp4", frames=96, width=640, height=360, seed=4)


def entries(r: Any, sid: str, prefix: str) -> list[dict[str, bytes]]:
    return [{k.decode(): v for k, v in f.items()} for _id, f in r.xrange(f"{prefix}:stream:{sid}:frames")]


def alerts(r: Any, prefix: str) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in f.items()} for _id, f in r.xrange(f"{prefix}:alerts")]


def write_config(path: Path, rules: list[dict[str, Any]] | None = None) -> Path:
    cfg: dict[str, Any] = {"zones": [{"name": "door", "polygon": DOOR}, {"name": "bay", "streams": ["cam"],
                                                                       "polygon": BAY}]}
    if rules:
        cfg["rules"] = rules
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(assets: dict[str, Path], clip: Path, redis: RedisServer, config: Path, prefix: str,
        *extra: str) -> subprocess.CompletedProcess[str]:
    p = cli("run", str(config), "-s", f"cam={clip}", *model_args(assets), "--sink", redis.url, "--metrics-port", "-1",
            "--redis-prefix", prefix, "--batch-size", "2", *extra)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    return p


def zone_pixels(polygon: list[list[float]], w: int, h: int) -> np.ndarray:
    """The test's own rasterisation (scikit-image, pixel-centre coordinates): not the pipeline's code."""
    rows, cols = draw_polygon([y * h - 0.5 for _x, y in polygon], [x * w - 0.5 for x, _y in polygon], (h, w))
    out = np.zeros((h, w), bool)
    out[rows, cols] = True
    return out


def reference_transitions(series: list[bool], for_frames: int, clear_frames: int) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    active, run_ = False, 0
    for i, h in enumerate(series):
        run_ = run_ + 1 if h != active else 0
        if run_ == (clear_frames if active else for_frames):
            active, run_ = not active, 0
            out.append((i, "start" if active else "end"))
    if active:
        out.append((len(series) - 1, "end"))  # the file's end ends it
    return out


def series_of(got: list[dict[str, bytes]], zone: str, cls: int, threshold: float) -> list[bool]:
    out = []
    for e in got:
        cov = json.loads(e["zones"])[zone]["coverage"].get(str(cls), 0.0)
        out.append(cov > 0 and cov >= threshold)
    return out


def test_zone_coverage_matches_the_mask_and_alerts_follow_the_debounce(assets: dict[str, Path], clip: Path,
                                                                       redis_server: RedisServer,
                                                                       tmp_path: Path) -> None:
    r = redis_server.client()
    run(assets, clip, redis_server, write_config(tmp_path / "zones.yaml"), "z1")
    meta = r.hgetall("z1:meta")
    assert json.loads(meta[b"zones"]) == [{"name": "door", "streams": None, "polygon": DOOR},
                                          {"name": "bay", "streams": ["cam"], "polygon": BAY}]
    assert json.loads(meta[b"rules"]) == []
    got = entries(r, "cam", "z1")
    assert [int(e["frame"]) for e in got] == list(range(96))
    checked = 0
    for e in got:
        mask = np.asarray(Image.open(io.BytesIO(e["mask"])))
        h, w = mask.shape
        zones = json.loads(e["zones"])
        assert set(zones) == {"door", "bay"}
        for name, poly in (("door", DOOR), ("bay", BAY)):
            inside = zone_pixels(poly, w, h)
            lo, hi = binary_erosion(inside), binary_dilation(inside)  # one pixel row/column either way
            cov = {int(k): v for k, v in zones[name]["coverage"].items()}
            assert sum(cov.values()) == pytest.approx(1.0, abs=1e-4)
            assert set(cov) <= set(np.unique(mask[hi]).tolist())
            assert set(np.unique(mask[lo]).tolist()) <= set(cov)
            for c in set(cov) | set(np.unique(mask[hi]).tolist()):
                frac = cov.get(c, 0.0)
                n_lo, n_hi = int((mask[lo] == c).sum()), int((mask[hi] == c).sum())
                assert n_lo / hi.sum() - 1e-6 <= frac <= n_hi / lo.sum() + 1e-6, (name, c, frac)
                checked += 1
            d = zones[name]["depth"]
            assert d["nearest"] >= d["median"]  # relative inverse depth: nearest is the largest value
        assert json.loads(e["depth"])["kind"] == "relative_inverse"

    # a rule whose coverage series crosses its threshold several times (chosen from the first run's series)
    best: tuple[int, int, float] = (-1, 0, 0.0)
    for cls in {int(k) for e in got for k in json.loads(e["zones"])["door"]["coverage"]}:
        values = sorted({json.loads(e["zones"])["door"]["coverage"].get(str(cls), 0.0) for e in got})
        for q in (0.3, 0.4, 0.5, 0.6, 0.7):
            i = min(int(q * len(values)), len(values) - 2)
            thr = (values[i] + values[i + 1]) / 2  # between two published values: no rounding ties
            n = len(reference_transitions(series_of(got, "door", cls, thr), FOR_FRAMES, CLEAR_FRAMES))
            best = max(best, (n, cls, thr))
    n, cls, thr = best
    assert n >= 4, f"the clip's coverage never crosses often enough ({best})"
    labels = json.loads(meta[b"labels"])
    rules = [{"name": "busy-door", "zone": "door", "classes": [labels[str(cls)]], "min_coverage": thr,
              "for_frames": FOR_FRAMES, "clear_frames": CLEAR_FRAMES}]
    cfg = write_config(tmp_path / "rules.yaml", rules)

    sub = r.pubsub()
    sub.subscribe("z2:alerts")
    sub.get_message(timeout=1)
    run(assets, clip, redis_server, cfg, "z2")
    got2 = entries(r, "cam", "z2")
    expect = reference_transitions(series_of(got2, "door", cls, thr), FOR_FRAMES, CLEAR_FRAMES)
    assert len(expect) >= 4
    al = alerts(r, "z2")
    assert [(int(a["frame"]), a["state"]) for a in al] == expect
    for a in al:
        assert a["rule"] == "busy-door" and a["zone"] == "door" and a["stream"] == "cam"
        frame = got2[int(a["frame"])]
        cov = json.loads(frame["zones"])["door"]["coverage"].get(str(cls), 0.0)
        assert float(a["coverage"]) == pytest.approx(cov, abs=2e-6)
        assert float(a["ts"]) == pytest.approx(float(frame["ts"]), abs=1e-5)
        assert "distance" not in a  # relative depth: no distance in metres
    assert r.hlen("z2:alerts:active") == 0  # the file's end ended every rule
    assert json.loads(r.hget("z2:meta", "rules"))[0]["classes"] == [cls]
    messages = []
    deadline = time.time() + 5
    while time.time() < deadline and len(messages) < len(al):
        m = sub.get_message(timeout=0.5)
        if m and m["type"] == "message":
            messages.append(json.loads(m["data"]))
    assert [(m["frame"], m["state"]) for m in messages] == expect

    # the `alerts` command prints them
    p = cli("alerts", "--redis", redis_server.url, "--redis-prefix", "z2", "-n", "100")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == len(expect)
    assert "cam busy-door START" in lines[0] and f"frame {expect[0][0]}" in lines[0]

    # --follow prints new alerts as they come
    follow = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "alerts", "--follow", "-n", "0", "--redis",
                               redis_server.url, "--redis-prefix", "z2"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        time.sleep(4)  # let it start blocking on the stream
        r.xadd("z2:alerts", {"rule": "busy-door", "zone": "door", "stream": "cam", "state": "start", "frame": "7",
                             "ts": "1.0", "coverage": "0.5"})
        assert follow.stdout is not None
        got_line = follow.stdout.readline()
        assert "cam busy-door START" in got_line and "frame 7" in got_line and "coverage 50.0%" in got_line
    finally:
        follow.send_signal(signal.SIGINT)
        follow.wait(30)

    # snapshot outlines the zones (not red: no rule is active after the file's end)
    from pipeline.overlay import ACTIVE_COLOUR, ZONE_COLOUR

    png = tmp_path / "snap.png"
    p = cli("snapshot", "cam", "--redis", redis_server.url, "--redis-prefix", "z2", "-o", str(png))
    assert p.returncode == 0, p.stderr
    pic = np.asarray(Image.open(png).convert("RGB")).astype(int)
    half_w = pic.shape[1] // 2
    for x0 in (0, half_w):  # the door's left edge at y = 0.625 lies at x = 0.075 of each half
        y, x = round(0.625 * pic.shape[0]), x0 + round(0.075 * half_w)
        window = pic[y - 3:y + 4, x - 4:x + 5]
        assert (np.abs(window - np.array(ZONE_COLOUR)).sum(-1) < 40).any(), "no zone outline in the snapshot"
        assert not (np.abs(window - np.array(ACTIVE_COLOUR)).sum(-1) < 40).any()

    # SIGKILL mid-run, then a rerun: the alerts stream holds exactly the debounce of the published series
    killed = tmp_path / "kill.yaml"
    write_config(killed, rules)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(killed), "-s", f"cam={clip}",
                             *model_args(assets), "--sink", redis_server.url, "--metrics-port", "-1",
                             "--redis-prefix", "z3", "--batch-size", "2"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    # kill just after the start of the longest active stretch: the rule is active when the process dies
    starts = [i for i, (_f, st) in enumerate(expect) if st == "start"]
    longest = max(starts, key=lambda i: expect[i + 1][0] - expect[i][0] if i + 1 < len(expect) else 0)
    deadline = time.time() + 180
    while time.time() < deadline and r.xlen("z3:alerts") < longest + 1:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    at_kill = r.xlen("z3:stream:cam:frames")
    assert 0 < at_kill < 96, f"killed at {at_kill} frames: too late to test a resume"
    state = json.loads(r.hget("z3:stream:cam:progress", "rules"))
    assert state["frame"] == at_kill - 1  # the rule state was stored with the last published frame
    active, count = state["rules"]["busy-door"][:2]
    assert active or count, f"killed where the debounce state does not matter ({state})"
    before = alerts(r, "z3")
    p = run(assets, clip, redis_server, killed, "z3")
    assert "already published" in p.stderr
    got3 = entries(r, "cam", "z3")
    assert [int(e["frame"]) for e in got3] == list(range(96))
    expect3 = reference_transitions(series_of(got3, "door", cls, thr), FOR_FRAMES, CLEAR_FRAMES)
    al3 = alerts(r, "z3")
    assert [(int(a["frame"]), a["state"]) for a in al3] == expect3
    assert al3[: len(before)] == before  # the rerun only added what the killed run had not written
    assert r.hlen("z3:alerts:active") == 0
    # a second rerun (nothing left to publish) adds nothing
    run(assets, clip, redis_server, killed, "z3")
    assert alerts(r, "z3") == al3


BAD = [
    ({"zones": [{"name": "d", "polygon": [[0, 0], [1, 1]]}]}, "at least 3 points"),
    ({"zones": [{"name": "d", "polygon": [[0, 0], [1.5, 0], [0, 1]]}]}, "outside the frame"),
    ({"zones": [{"name": "d", "polygon": [[0, 0], [1, 1], [1, 0], [0, 1]]}]}, "self-intersecting"),
    ({"zones": [{"name": "d e", "polygon": DOOR}]}, "invalid zone name"),
    ({"zones": [{"name": "d", "polygon": DOOR, "colour": "red"}]}, "unknown config key 'zones.0.colour'"),
    ({"zones": [{"name": "d", "polygon": DOOR}], "rules": [{"name": "r", "zone": "nope", "classes": ["person"]}]},
     "unknown zone 'nope'"),
    ({"zones": [{"name": "d", "polygon": DOOR}], "rules": [{"name": "r", "zone": "d"}]}, "tests nothing"),
    ({"zones": [{"name": "d", "polygon": DOOR}], "rules": [{"name": "r", "zone": "d", "classes": ["persn"]}]},
     "unknown class 'persn'"),
    ({"zones": [{"name": "d", "polygon": DOOR}], "rules": [{"name": "r", "zone": "d", "max_distance_m": 1.5}]},
     "max_distance_m needs a metric depth checkpoint"),
]


@pytest.mark.parametrize("cfg, words", BAD, ids=[w for _c, w in BAD])
def test_bad_zone_and_rule_configs_are_one_line(assets: dict[str, Path], tmp_path: Path, cfg: dict[str, Any],
                                                words: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = cli("run", str(path), "-s", f"cam={assets['clip360']}", *model_args(assets), "--sink", f"dir:{tmp_path}/o",
            "--metrics-port", "-1", "--quiet")
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dptstream: error: "), p.stderr
    assert words in lines[0]
    assert not (tmp_path / "o" / "cam.jsonl").exists()  # refused before any frame


def test_a_live_reconnect_keeps_an_active_rule_active(tmp_path: Path, redis_server: RedisServer,
                                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    """A camera that drops and comes back: its rule (true on every frame) starts once and is never restarted by
    the reconnect; it ends only when the run stops."""
    from tests.support.live import (
        FPS,
        H,
        LivePipeline,
        W,
        engines_for,
        make_config,
        need_rtsp,
        session_live_assets,
        wait_for,
    )
    from tests.support.rtsp_server import RtspServer

    need_rtsp()
    live = session_live_assets(tmp_path_factory)
    srv = RtspServer(live.raw, W, H, ["cam"], fps=FPS, log=tmp_path / "rtsp.log")
    srv.start()
    try:
        cfg = make_config(live, [{"id": "cam", "uri": srv.url("cam")}], [redis_server.url],
                          live={"reconnect_initial_s": 0.2, "reconnect_max_s": 1.0, "stall_timeout_s": 3.0},
                          zones=[{"name": "all", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}],
                          rules=[{"name": "anything", "zone": "all", "classes": list(range(150)),
                                  "min_coverage": 0.5, "for_frames": 3, "clear_frames": 2}])
        r = redis_server.client()
        with LivePipeline(cfg, engines_for(live)) as lp:
            wait_for(lambda: r.xlen("dpt:alerts") >= 1 and r.xlen("dpt:stream:cam:frames") >= 10, 60,
                     "the rule's start")
            assert lp.metric("dptstream_rule_active", stream="cam", rule="anything") == 1
            before = r.xlen("dpt:stream:cam:frames")
            srv.restart(down_s=1.0)
            wait_for(lambda: lp.metric("dptstream_stream_reconnects_total", stream="cam") >= 1, 30, "a reconnect")
            wait_for(lambda: r.xlen("dpt:stream:cam:frames") >= before + 10, 60, "frames after the reconnect")
            assert [a["state"] for a in alerts(r, "dpt")] == ["start"]
            assert lp.metric("dptstream_rule_active", stream="cam", rule="anything") == 1
            assert lp.metric("dptstream_rule_events_total", stream="cam", rule="anything", state="start") == 1
            assert json.loads(r.hget("dpt:alerts:active", "cam/anything"))["state"] == "start"
        al = alerts(r, "dpt")
        assert [(a["state"], a.get("reason")) for a in al] == [("start", None), ("end", "eof")]
        assert r.hlen("dpt:alerts:active") == 0
    finally:
        srv.stop()


def test_a_fresh_start_ends_what_a_previous_run_left_active(redis_server: RedisServer) -> None:
    """The Redis side alone: a frame's start alert, a killed run, then the stream started afresh (a live camera
    at process start, --no-resume): the stale active rule is ended once (reason restart); a stream's end is
    written once even if sent twice."""
    from pipeline.config import PipelineConfig
    from pipeline.frames import EndOfStream, FrameId, Result
    from pipeline.metrics import Metrics
    from pipeline.sinks import RedisSink

    cfg = PipelineConfig.model_validate({"sinks": [redis_server.url], "zones": [{"name": "door", "polygon": DOOR}],
                                         "rules": [{"name": "busy", "zone": "door", "classes": [12]}]})
    sink = RedisSink(redis_server.url, cfg, Metrics())
    sink.open()
    r = redis_server.client()
    try:
        start = {"rule": "busy", "zone": "door", "stream": "cam", "state": "start", "frame": 4, "ts": 10.5,
                 "coverage": 0.25}
        fid = FrameId("cam", 4, 0.2, 10.5, 64, 36)
        sink.write([Result(fid, None, alerts=(start,), rule_state='{"frame":4}')])
        sink.write([Result(fid, None, alerts=(start,), rule_state='{"frame":4}')])  # a retried write: ignored
        assert [a["state"] for a in alerts(r, "dpt")] == ["start"]
        assert json.loads(r.hget("dpt:alerts:active", "cam/busy")) == start
        assert r.hget("dpt:stream:cam:progress", "rules") == b'{"frame":4}'
        sink.reset_progress("cam")
        al = alerts(r, "dpt")
        assert [(a["state"], a.get("reason"), a["frame"]) for a in al] == [("start", None, "4"),
                                                                          ("end", "restart", "4")]
        assert r.hlen("dpt:alerts:active") == 0 and r.hget("dpt:stream:cam:progress", "rules") is None
        sink.reset_progress("cam")  # nothing left to end
        assert len(alerts(r, "dpt")) == 2
        # a stream's end: written once
        sink.write([Result(FrameId("cam", 0, 0.0, 11.0, 64, 36), None, alerts=({**start, "frame": 0},),
                           rule_state='{"frame":0}')])
        end = {**start, "state": "end", "frame": 0, "reason": "eof"}
        eos = EndOfStream("cam", 1, alerts=(end,), rule_state='{"frame":0,"rules":{}}')
        sink.end_stream(eos)
        sink.end_stream(eos)
        assert [(a["state"], a.get("reason")) for a in alerts(r, "dpt")][2:] == [("start", None), ("end", "eof")]
        assert r.hlen("dpt:alerts:active") == 0
    finally:
        sink.close()


def test_a_distance_rule_with_a_metric_depth_checkpoint(assets: dict[str, Path], clip: Path,
                                                        redis_server: RedisServer, tmp_path: Path) -> None:
    """Metric depth (a tiny metric Depth Anything): the zone's nearest value is in metres (the lowest), and a
    max_distance_m rule's alerts are the debounce of `nearest <= max_distance_m` over the published series."""
    from pipeline.checkpoints import make_family_checkpoint

    metric = make_family_checkpoint(tmp_path / "da-metric", "depth-anything-v2-metric")
    models = ["-m", f"segmentation={assets['segmentation']}", "-m", f"depth={metric}"]
    r = redis_server.client()

    def go(cfg: dict[str, Any], prefix: str) -> list[dict[str, bytes]]:
        path = tmp_path / f"{prefix}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        p = cli("run", str(path), "-s", f"cam={clip}", *models, "--sink", redis_server.url, "--metrics-port", "-1",
                "--redis-prefix", prefix, "--batch-size", "2")
        assert p.returncode == 0, p.stderr
        return entries(r, "cam", prefix)

    zones = [{"name": "path", "polygon": DOOR}]
    got = go({"zones": zones}, "m1")
    assert json.loads(got[0]["depth"])["kind"] == "metric"
    nearest = [json.loads(e["zones"])["path"]["depth"]["nearest"] for e in got]
    medians = [json.loads(e["zones"])["path"]["depth"]["median"] for e in got]
    assert all(n <= m for n, m in zip(nearest, medians, strict=True))  # metres: nearest is the lowest
    values = sorted(set(nearest))
    best = (-1, 0.0)
    for q in (0.3, 0.4, 0.5, 0.6, 0.7):
        i = min(int(q * len(values)), len(values) - 2)
        thr = (values[i] + values[i + 1]) / 2
        best = max(best, (len(reference_transitions([n <= thr for n in nearest], 2, 2)), thr))
    n, thr = best
    assert n >= 2, f"the nearest distance never crosses often enough ({best})"
    rules = [{"name": "too-close", "zone": "path", "max_distance_m": thr, "for_frames": 2, "clear_frames": 2}]
    got2 = go({"zones": zones, "rules": rules}, "m2")
    near2 = [json.loads(e["zones"])["path"]["depth"]["nearest"] for e in got2]
    expect = reference_transitions([v <= thr for v in near2], 2, 2)
    al = alerts(r, "m2")
    assert [(int(a["frame"]), a["state"]) for a in al] == expect and len(expect) >= 2
    for a in al:
        if a.get("reason") != "eof":
            assert float(a["distance"]) == pytest.approx(near2[int(a["frame"])], abs=2e-6)
            assert "coverage" not in a  # a distance-only rule


def test_a_zone_for_no_configured_stream_and_a_zone_without_a_pixel_are_warned_once(
        assets: dict[str, Path], tmp_path: Path) -> None:
    """Both are legal (a zone list shared by several runs; a mask size chosen later) but do nothing here: each is
    one warning, once per run, and the run goes on."""
    speck = [[0.0001, 0.0001], [0.002, 0.0001], [0.0001, 0.002]]  # between the first pixel centres of any mask
    path = tmp_path / "zones.yaml"
    path.write_text(yaml.safe_dump({"zones": [{"name": "elsewhere", "streams": ["frnot"], "polygon": BAY},
                                              {"name": "speck", "polygon": speck},
                                              {"name": "door", "polygon": DOOR}]}))
    p = cli("run", str(path), "-s", f"cam={assets['clip360']}", *model_args(assets), "--sink", f"dir:{tmp_path}/o",
            "--metrics-port", "-1", "--batch-size", "4")
    assert p.returncode == 0, p.stderr
    unknown = [ln for ln in p.stderr.splitlines() if "zone 'elsewhere'" in ln]
    assert len(unknown) == 1 and "'frnot'" in unknown[0] and "sources: cam" in unknown[0], p.stderr
    assert "applies to no stream" in unknown[0]
    empty = [ln for ln in p.stderr.splitlines() if "zone 'speck'" in ln]
    assert len(empty) == 1 and "holds no pixel centre" in empty[0] and "'cam'" in empty[0], p.stderr
    assert not [ln for ln in p.stderr.splitlines() if "zone 'door'" in ln]
    frames = (tmp_path / "o" / "cam.jsonl").read_text().splitlines()
    assert len(frames) == 20 and json.loads(frames[0])["zones"]["speck"] == {"coverage": {}}
