"""``dptstream view`` end to end: real Redis filled by a real ``dptstream run`` on real-content clips, the view as
a subprocess, and headless Chromium (Debian's chromium + chromium-driver, driven by Selenium; no download)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline.overlay import ACTIVE_COLOUR, ZONE_COLOUR
from tests.support.entries import png_claiming
from tests.support.servers import ROOT, RedisServer, cli, free_port

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
W, H, NET = 320, 180, 96  # small real-content clips and fast checkpoints


# -- helpers ------------------------------------------------------------------------------------------------

def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if isinstance(v, np.ndarray) or v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def dptstream() -> list[str]:
    """The installed ``dptstream`` command (next to this interpreter), as a user runs it."""
    exe = Path(sys.executable).with_name("dptstream")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "pipeline.cli"]


class Proc:
    """A ``dptstream`` subprocess whose output is collected (and checked for secrets) while it runs."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        # PYTHONPATH: the installed command runs this tree's code (an editable install may point at another)
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        e = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, **(env or {})}
        self.proc = subprocess.Popen([*dptstream(), *args], cwd=str(ROOT), env=e,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)
        return int(self.proc.returncode)


class View(Proc):
    def __init__(self, redis_url: str, *extra: str, port: int | None = None, env: dict[str, str] | None = None
                 ) -> None:
        self.port = port or free_port()
        super().__init__("view", "--redis", redis_url, "--port", str(self.port), *extra, env=env)
        self.base = f"http://127.0.0.1:{self.port}"

        def up() -> bool:
            assert self.alive(), f"dptstream view exited:\n{self.output}"
            try:
                return get(self.base + "/healthz")[0] == 200
            except OSError:
                return False

        wait_for(up, 30, "the view to listen")

    def api(self, query: str = "") -> dict[str, Any]:
        code, _, body = get(self.base + "/api/streams" + query)
        assert code == 200, body
        return json.loads(body)  # type: ignore[no-any-return]


def model_args(assets: dict[str, Path]) -> list[str]:
    return ["-m", f"segmentation={assets['segmentation']}", "-m", f"depth={assets['depth']}", "--device", "cpu",
            "--metrics-port", "-1"]


def jpeg_array(data: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    assert im.format == "JPEG"
    return np.asarray(im.convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from pipeline.sample import make_checkpoint, make_clip

    d = tmp_path_factory.mktemp("view-assets")
    return {
        "a": make_clip(d / "a.mp4", frames=16, width=W, height=H, fps=15, seed=1),
        "b": make_clip(d / "b.mp4", frames=12, width=W, height=H, fps=15, seed=2),
        "live": make_clip(d / "live.mp4", frames=30, width=W, height=H, fps=15, seed=3),
        "segmentation": make_checkpoint(d / "seg", "segmentation", image_size=NET),
        "depth": make_checkpoint(d / "depth", "depth", image_size=NET),
        "dir": d,
    }


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for exe in (CHROMIUM, CHROMEDRIVER):
        if not os.access(exe, os.X_OK):
            pytest.fail(f"{exe} is missing: apt-get install chromium chromium-driver (scripts/setup.sh does)")
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager fetch a browser or a driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900",
              "--disable-extensions", "--no-first-run"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """The browser with an empty console; left on a blank page (so no page outlives its view server)."""
    browser.get("about:blank")
    browser.get_log("browser")
    yield browser
    browser.get("about:blank")


_PIXELS_JS = """
const img = arguments[0];
if (!img || !img.complete || !img.naturalWidth) return null;
const c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
c.getContext('2d').drawImage(img, 0, 0);
return c.toDataURL('image/png');
"""


def tile_pixels(driver: Any, sid: str) -> np.ndarray | None:
    """The pixels the browser shows in ``sid``'s tile image (drawn on a canvas), or None before it loads."""
    img = driver.execute_script(f"return document.querySelector('.tile[data-stream=\"{sid}\"] img')")
    url = driver.execute_script(_PIXELS_JS, img) if img is not None else None
    if not url:
        return None
    png = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def tile_text(driver: Any, sid: str, part: str) -> str:
    return str(driver.execute_script(
        f"const e = document.querySelector('.tile[data-stream=\"{sid}\"] {part}'); return e ? e.textContent : null")
        or "")


def publish_files(redis: RedisServer, assets: dict[str, Path], tmp: Path) -> None:
    cfg = tmp / "thumb.yaml"
    cfg.write_text("redis:\n  thumbnail: 160\n")
    r = cli("run", str(cfg), "-s", f"a={assets['a']}", "-s", f"b={assets['b']}", "--sink", redis.url,
            *model_args(assets))
    assert r.returncode == 0, r.stderr


# -- the wall, latest.jpg, the API, zones and alerts over a finished run -----------------------------------

def test_wall_latest_jpg_api_zones_and_alerts(assets: dict[str, Path], redis_server: RedisServer, tmp_path: Path,
                                              page: Any) -> None:
    browser = page
    from engines.labels import ADE20K_LABELS

    publish_files(redis_server, assets, tmp_path)
    rd = redis_server.client()
    view = View(redis_server.url)
    try:
        # /api/streams: one record per stream, from the last entries
        state = wait_for(lambda: (s := view.api())["streams"] and all(x["image"] for x in s["streams"]) and s,
                         20, "both streams rendered")
        assert state["redis"] == "ok" and state["error"] is None
        by_id = {s["id"]: s for s in state["streams"]}
        assert sorted(by_id) == ["a", "b"]
        for sid, frames in (("a", 16), ("b", 12)):
            s = by_id[sid]
            assert s["frame"] == frames - 1
            assert s["fps"] > 0 and s["latency_ms"] > 0 and s["age_s"] >= 0
            assert s["state"] in ("fresh", "stale")
            newest = rd.xrevrange(f"dpt:stream:{sid}:frames", count=1)[0][1]
            published = {int(k): v for k, v in json.loads(newest[b"classes"]).items()}
            assert [c["id"] for c in s["classes"]] == sorted(published, key=lambda c: (-published[c], c))
            assert all(c["name"] == ADE20K_LABELS[c["id"]] for c in s["classes"])
            assert s["alerts"] == [] and s["zones"] == []

        # latest.jpg is snapshot's rendering of the newest entry (JPEG-compressed)
        snaps: dict[str, np.ndarray] = {}
        jpgs: dict[str, np.ndarray] = {}
        for sid in ("a", "b"):
            png = tmp_path / f"{sid}.png"
            s = cli("snapshot", sid, "-o", str(png), "--redis", redis_server.url)
            assert s.returncode == 0, s.stderr
            snaps[sid] = np.asarray(Image.open(png).convert("RGB")).astype(np.int16)
            code, headers, body = get(f"{view.base}/streams/{sid}/latest.jpg")
            assert code == 200 and headers["Content-Type"] == "image/jpeg"
            assert headers["X-Dptstream-Frame"] == str(by_id[sid]["frame"])
            jpgs[sid] = jpeg_array(body)
            assert jpgs[sid].shape == snaps[sid].shape
        half = snaps["a"].shape[1] // 2
        for sid, other in (("a", "b"), ("b", "a")):
            mask_part = np.s_[:, :half]
            same = np.abs(jpgs[sid][mask_part] - snaps[sid][mask_part]).mean()
            different = np.abs(jpgs[sid][mask_part] - snaps[other][mask_part]).mean()
            assert same < 4, f"{sid}: latest.jpg's mask half differs from snapshot's by {same:.1f} grey levels"
            assert different > 5 * same, f"{sid}: the other stream's snapshot is as close ({different:.1f})"
            assert np.abs(jpgs[sid] - snaps[sid]).mean() < 4  # and the depth half too

        # unknown and invalid ids: one line each
        code, _, body = get(f"{view.base}/streams/nope/latest.jpg")
        assert code == 404
        assert body.decode().splitlines() == ["unknown stream 'nope' under prefix dpt; known streams: a, b"]
        code, _, body = get(f"{view.base}/streams/a%20b/latest.jpg")
        assert code == 400 and body.decode().splitlines() == [
            "invalid stream id 'a b': use 1-64 of A-Z a-z 0-9 . _ -"]

        # the wall in a real browser: one tile per stream, real pictures, names, a large view with a legend
        browser.get(view.base + "/")
        wait_for(lambda: browser.execute_script("return document.querySelectorAll('.tile').length") == 2, 10,
                 "two tiles")
        for sid in ("a", "b"):
            px = wait_for(lambda sid=sid: tile_pixels(browser, sid), 10, f"{sid}'s tile image")
            assert px.shape == jpgs[sid].shape
            assert px.std() > 20, f"{sid}'s tile is blank (std {px.std():.1f})"
            assert np.abs(px - jpgs[sid]).mean() < 1  # the browser shows latest.jpg itself
            top = by_id[sid]["classes"][0]
            assert f"{top['name']} " in tile_text(browser, sid, ".classes")
            banner = tile_text(browser, sid, ".banner")
            assert banner == "" or banner.startswith("stale: no new entry for"), banner
        browser.find_element("css selector", '.tile[data-stream="a"]').click()
        wait_for(lambda: browser.execute_script("return !document.getElementById('large').hidden"), 5, "large view")
        legend = browser.execute_script("return [...document.querySelectorAll('#legend li')].map(e => e.textContent)")
        assert len(legend) == len(by_id["a"]["classes"])
        assert legend[0].startswith(by_id["a"]["classes"][0]["name"] + " ")
        assert browser.find_element("id", "large-title").text == "a"
        browser.find_element("id", "close").click()
        wait_for(lambda: browser.execute_script("return document.getElementById('large').hidden"), 5, "closed")

        # one render per entry per stream, whoever watches: many reads, still two pictures made
        for _ in range(10):
            assert get(f"{view.base}/streams/a/latest.jpg")[0] == 200
        assert view.api()["renders"] == 2

        # zones (the meta contract of README's "Redis schema"), drawn by snapshot's own code: latest.jpg's outline pixels are snapshot's
        zone = {"name": "door", "streams": ["a"], "polygon": [[0.2, 0.2], [0.6, 0.2], [0.6, 0.9], [0.2, 0.9]]}
        rd.hset("dpt:meta", "zones", json.dumps([zone]))
        wait_for(lambda: view.api()["streams"][0]["zones"] == ["door"], 10, "the zone to show")
        wait_for(lambda: view.api()["renders"] == 3, 10, "a's picture to be drawn again with its zone")

        def latest(sid: str) -> np.ndarray:
            return jpeg_array(get(f"{view.base}/streams/{sid}/latest.jpg")[2])

        def snapshot(sid: str) -> np.ndarray:
            png = tmp_path / f"{sid}-zones.png"
            s = cli("snapshot", sid, "-o", str(png), "--redis", redis_server.url)
            assert s.returncode == 0, s.stderr
            return np.asarray(Image.open(png).convert("RGB")).astype(np.int16)

        def outline_agrees(colour: tuple[int, int, int]) -> None:
            snap, got = snapshot("a"), latest("a")
            drawn = np.abs(snap - snaps["a"]).sum(axis=-1) > 60  # the pixels snapshot's zone drawing changed
            assert drawn.sum() > 300, f"snapshot drew no zone ({drawn.sum()} pixels)"
            assert np.abs(got[drawn] - snap[drawn]).mean() < 12, "latest.jpg's zone outline is not snapshot's"
            on = np.abs(snap[drawn] - np.array(colour)).max(axis=-1) < 30
            assert on.mean() > 0.5, f"snapshot's outline is not {colour}"
            assert (np.abs(got[drawn] - np.array(colour)).max(axis=-1) < 80).mean() > 0.5 * on.mean()

        outline_agrees(ZONE_COLOUR)
        assert np.abs(latest("b") - jpgs["b"]).mean() < 1  # b: no zone, unchanged
        # ... red while a rule on it is active, with the alert on the tile and in the API
        start = {"rule": "person-in-door", "zone": "door", "stream": "a", "state": "start", "frame": 9,
                 "ts": time.time(), "coverage": 0.31}
        rd.hset("dpt:alerts:active", "a/person-in-door", json.dumps(start))
        wait_for(lambda: view.api()["renders"] == 4, 10, "a's picture drawn again with the zone active")
        outline_agrees(ACTIVE_COLOUR)
        a = view.api()["streams"][0]
        assert a["alerts"] == [{"rule": "person-in-door", "zone": "door", "frame": 9, "ts": start["ts"],
                                "coverage": 0.31}]
        wait_for(lambda: tile_text(browser, "a", ".alerts") == "person-in-door @ door", 5, "the alert on the tile")
        red_jpg = latest("a")
        wait_for(lambda: (px := tile_pixels(browser, "a")) is not None and np.abs(px - red_jpg).mean() < 1, 5,
                 "the red zone in the browser")
        assert tile_text(browser, "b", ".alerts") == ""
        rd.hdel("dpt:alerts:active", "a/person-in-door")
        wait_for(lambda: view.api()["renders"] == 5, 10, "the zone drawn again when the alert ends")
        outline_agrees(ZONE_COLOUR)
        wait_for(lambda: tile_text(browser, "a", ".alerts") == "", 5, "the alert gone from the tile")
        assert console_errors(browser) == []
    finally:
        browser.get("about:blank")
        assert view.stop() == 0, view.output


# -- a live source: the picture changes by itself; Redis restarts; the page recovers without a reload --------

def test_live_tile_changes_and_recovers_from_a_redis_restart(assets: dict[str, Path], redis_server: RedisServer,
                                                             tmp_path: Path, page: Any) -> None:
    browser = page
    cfg = tmp_path / "live.yaml"
    cfg.write_text(
        f"sources:\n  - {{id: cam, uri: '{assets['live']}', loop: true, realtime: true, live: true}}\n"
        "redis: {thumbnail: 160, retry_max_s: 0.5}\n"
        "engine: {threads: 1, batch_size: 1, max_wait_ms: 0}\n")
    pipe = Proc("run", str(cfg), "--sink", redis_server.url, *model_args(assets))
    view = None
    try:
        rd = redis_server.client()
        wait_for(lambda: rd.xlen("dpt:stream:cam:frames") > 0 if rd.exists("dpt:stream:cam:frames") else False,
                 60, f"the pipeline's first entry\n{pipe.output}", interval=0.2)
        view = View(redis_server.url, "--stale-after", "3")
        browser.get(view.base + "/")
        browser.execute_script("window.__sameDocument = 'yes'")

        def changes(times: int, within: float) -> None:
            prev = wait_for(lambda: tile_pixels(browser, "cam"), 10, "cam's tile image")
            assert prev.std() > 20, "cam's tile is blank"
            for k in range(times):
                def changed(prev: np.ndarray = prev) -> np.ndarray | None:
                    px = tile_pixels(browser, "cam")
                    return px if px is not None and np.abs(px - prev).mean() > 1 else None
                prev = wait_for(changed, within, f"change {k + 1} of cam's picture")

        changes(3, within=2.0)
        state = view.api()["streams"][0]
        assert state["state"] == "fresh" and state["fps"] > 1

        redis_server.stop()
        wait_for(lambda: tile_text(browser, "cam", ".banner") == "Redis unreachable", 10, "the tile to say so")
        assert browser.find_element("id", "status").text == "Redis unreachable"
        api = view.api()
        assert api["redis"] == "unreachable" and api["streams"][0]["state"] == "unreachable"
        assert get(f"{view.base}/streams/cam/latest.jpg")[0] == 200  # the last picture is still served
        time.sleep(1.5)
        assert view.alive() and pipe.alive()

        redis_server.start()  # same port, empty (no persistence): the pipeline publishes again
        wait_for(lambda: tile_text(browser, "cam", ".banner") == "", 30, "the tile to recover")
        changes(2, within=2.0)
        assert browser.execute_script("return window.__sameDocument") == "yes"  # no reload happened
        assert view.api()["redis"] == "ok"
        assert console_errors(browser) == []
        assert "Redis at redis://127.0.0.1" in view.output and "reachable again" in view.output
    finally:
        browser.get("about:blank")
        if view is not None:
            assert view.stop() == 0, view.output
        pipe.stop()


def test_view_shows_a_real_runs_zones_and_its_active_alert(assets: dict[str, Path], redis_server: RedisServer,
                                                           tmp_path: Path) -> None:
    """A real run with zones: the view shows the zones and the alert the pipeline publishes, while it is active."""
    cfg = tmp_path / "zones-live.yaml"
    everything = list(range(150))  # every ADE20K class: the zone is always covered, so the rule holds at once
    cfg.write_text(json.dumps({  # YAML is a superset of JSON
        "sources": [{"id": "cam", "uri": str(assets["live"]), "loop": True, "realtime": True, "live": True}],
        "engine": {"threads": 1, "batch_size": 1, "max_wait_ms": 0},
        "zones": [{"name": "door", "streams": ["cam"], "polygon": [[0.1, 0.1], [0.6, 0.1], [0.6, 0.9], [0.1, 0.9]]},
                  {"name": "elsewhere", "streams": ["other"], "polygon": [[0.0, 0.0], [0.5, 0.0], [0.5, 0.5]]}],
        "rules": [{"name": "door-busy", "zone": "door", "classes": everything, "min_coverage": 0.5,
                   "for_frames": 2, "clear_frames": 2}],
    }))
    pipe = Proc("run", str(cfg), "--sink", redis_server.url, *model_args(assets))
    view = None
    try:
        rd = redis_server.client()
        wait_for(lambda: rd.hexists("dpt:alerts:active", "cam/door-busy"), 60,
                 f"the pipeline's alert to start\n{pipe.output}", interval=0.2)
        published = json.loads(rd.hget("dpt:alerts:active", "cam/door-busy"))
        assert published["state"] == "start" and published["zone"] == "door"
        view = View(redis_server.url)
        s = wait_for(lambda: (st := view.api()["streams"]) and st[0]["image"] and st[0]["alerts"] and st[0], 20,
                     "the view to show cam with its alert")
        assert s["id"] == "cam" and s["zones"] == ["door"]  # "elsewhere" is for another stream
        (alert,) = s["alerts"]
        assert alert["rule"] == "door-busy" and alert["zone"] == "door"
        assert alert["frame"] == published["frame"] and alert["ts"] == published["ts"]
        assert alert["coverage"] == pytest.approx(1.0)
        # the tile is drawn with the zone active (red), as snapshot draws it
        snap = cli("snapshot", "cam", "-o", str(tmp_path / "cam.png"), "--redis", redis_server.url)
        assert snap.returncode == 0, snap.stderr
        code, _, body = get(f"{view.base}/streams/cam/latest.jpg")
        assert code == 200
        pic = jpeg_array(body)
        h, w = pic.shape[0], pic.shape[1] // 2
        edge = pic[round(0.3 * h):round(0.7 * h), round(0.1 * w) - 1:round(0.1 * w) + 1].reshape(-1, 3)
        assert (np.abs(edge - np.array(ACTIVE_COLOUR)).max(axis=-1) < 80).mean() > 0.5
        # dptstream show names the entry's zone in brief: top class coverage, nearest depth with its units
        shown = cli("show", "cam", "--redis", redis_server.url)
        assert shown.returncode == 0, shown.stderr
        assert re.search(r"zones: door \S.* \d+% nearest [-\d.e+]+ relative inverse \(larger = nearer\)",
                         shown.stdout), shown.stdout
        assert pipe.stop() == 0, pipe.output
        # the run's end ends the rule: the view drops the alert
        assert not rd.hexists("dpt:alerts:active", "cam/door-busy")
        wait_for(lambda: view.api()["streams"][0]["alerts"] == [], 10, "the alert to go when the run ends")
    finally:
        if view is not None:
            assert view.stop() == 0, view.output
        pipe.stop()


# -- who may look ------------------------------------------------------------------------------------------

def test_binding_beyond_loopback_needs_a_token_and_requests_without_it_get_401(redis_server: RedisServer) -> None:
    port = free_port()
    r = cli("view", "--host", "0.0.0.0", "--port", str(port), "--redis", redis_server.url, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "dptstream: error: --host 0.0.0.0 serves the view beyond this machine: pass --token TOKEN or set "
        "DPTSTREAM_VIEW_TOKEN (or bind 127.0.0.1)"]
    empty = cli("view", "--host", "0.0.0.0", "--port", str(port), "--token", " ", "--redis", redis_server.url,
                timeout=60)
    assert empty.returncode == 2 and len(empty.stderr.strip().splitlines()) == 1

    token = "tok-" + "7" * 28
    view = View(redis_server.url, "--host", "0.0.0.0", port=port, env={"DPTSTREAM_VIEW_TOKEN": token})
    try:
        for path in ("/", "/api/streams", "/api/events", "/streams/a/latest.jpg"):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {token}"}):
                code, h, body = get(view.base + path, headers)
                assert code == 401, (path, headers)
                assert body.decode().splitlines() == [
                    "unauthorized: send the view token as 'Authorization: Bearer TOKEN' or ?token=TOKEN"]
                assert h["WWW-Authenticate"].startswith("Bearer")
            assert get(view.base + path + "?token=" + token[:-1])[0] == 401
        assert get(view.base + "/api/streams", {"Authorization": f"Bearer {token}"})[0] == 200
        assert get(view.base + f"/api/streams?token={token}")[0] == 200
        assert get(view.base + "/healthz")[0] == 200  # probes need no token, and learn nothing
        assert token not in view.output
    finally:
        assert view.stop() == 0, view.output


def test_redis_passwords_never_reach_a_page_a_log_or_an_error(tmp_path: Path, assets: dict[str, Path]) -> None:
    secret = "hunter2-s3cret"
    srv = RedisServer(tmp_path / "redis", extra=["--requirepass", secret])
    srv.start()
    try:
        url = f"redis://:{secret}@127.0.0.1:{srv.port}/0"
        r = cli("run", "-s", f"a={assets['b']}", "--sink", url, *model_args(assets))
        assert r.returncode == 0, r.stderr
        view = View(url)
        try:
            state = wait_for(lambda: (s := view.api())["streams"] and s["streams"][0]["image"] and s, 20,
                             "the stream rendered")
            assert state["redis"] == "ok"
            pages = [get(view.base + p)[2] for p in ("/", "/api/streams", "/streams/nope/latest.jpg")]
            assert all(secret.encode() not in p for p in pages)
            srv.stop()  # and while Redis is away
            wait_for(lambda: view.api()["redis"] == "unreachable", 10, "unreachable")
            assert secret.encode() not in get(view.base + "/api/streams")[2]
        finally:
            assert view.stop() == 0
        assert secret not in view.output and f"redis://:***@127.0.0.1:{srv.port}/0" in view.output
        # refused credentials: one line, exit 2, redacted
        srv.start()
        wrong = cli("view", "--redis", f"redis://:not-{secret}@127.0.0.1:{srv.port}/0", "--port",
                    str(free_port()), timeout=60)
        assert wrong.returncode == 2
        lines = wrong.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"dptstream: error: Redis at redis://:***@127.0.0.1:{srv.port}/0 refused the credentials")
        assert secret not in wrong.stderr
    finally:
        srv.stop()


def raw_request(port: int, request: bytes) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("debug", [False, True])
def test_a_bad_http_request_is_one_log_line_without_the_token(redis_server: RedisServer, debug: bool) -> None:
    token = "tok-SECRET-9"
    view = View(redis_server.url, "--token", token, *(["--debug"] if debug else []))
    try:
        bad = [f"GET /api/streams?token={token}&{'a' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
               f"GET /api/streams?token={token}&x=\x01 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
               f"GET /api/streams?token={token} HTTP/1.1\r\nHost: x\r\nBad\x01Header: {token}\r\n\r\n".encode()]
        for request in bad:
            assert raw_request(view.port, request).split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")
        assert view.api(f"?token={token}")["streams"] == []  # and it serves on
        wait_for(lambda: view.output.count("bad HTTP request from 127.0.0.1") == len(bad), 10, "the log lines")
    finally:
        assert view.stop() == 0, view.output
    assert token not in view.output, view.output
    assert "Error handling request" not in view.output
    if not debug:
        assert "Traceback" not in view.output
        warnings = [ln for ln in view.lines if "WARNING" in ln or "ERROR" in ln]
        assert len(warnings) == len(bad) and all("bad HTTP request from 127.0.0.1: " in w for w in warnings)


def test_a_credential_that_is_not_utf8_is_a_401_and_one_warning(redis_server: RedisServer) -> None:
    token = "tok-SECRET-9"
    view = View(redis_server.url, "--token", token)
    try:
        for auth in (b"Bearer \xff\xfe", b"\xff\xfe", b"Bearer " + token.encode() + b"\xff"):
            reply = raw_request(view.port, b"GET /api/streams HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth
                                + b"\r\nConnection: close\r\n\r\n")
            assert reply.split(b"\r\n", 1)[0] == b"HTTP/1.1 401 Unauthorized", reply[:200]
            assert reply.rstrip().endswith(b"?token=TOKEN"), reply  # the one-line answer of a wrong token
        assert get(view.base + "/api/streams?token=%ff%fe")[0] == 401
        assert view.api(f"?token={token}")["streams"] == []  # and it serves on
        wait_for(lambda: view.output.count("bad credential from 127.0.0.1") == 3, 10, "the log lines")
    finally:
        assert view.stop() == 0, view.output
    warnings = [ln for ln in view.lines if "WARNING" in ln or "ERROR" in ln]
    assert [w.split(" - ")[-1].partition(" WARNING ")[2] for w in warnings if "credential" in w] == [
        "pipeline.view.server: bad credential from 127.0.0.1: the Authorization header is not UTF-8"] * 3
    assert "ERROR" not in view.output and "Traceback" not in view.output, view.output


# -- a viewer that never reads is dropped; the others keep getting updates; the server's memory stays bounded ----

def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_viewer_that_does_not_read_is_dropped_and_the_others_keep_their_updates(
        assets: dict[str, Path], redis_server: RedisServer, tmp_path: Path) -> None:
    import socket

    publish_files(redis_server, assets, tmp_path)
    rd = redis_server.client()
    # a wall of 150 cameras: a real run's entries of stream a, published again under 150 ids (so each state
    # update is tens of KB and a reader that stops reading fills its buffers within seconds)
    entries = [fields for _id, fields in rd.xrange("dpt:stream:a:frames")]
    pipe = rd.pipeline()
    for k in range(150):
        for f in entries:
            pipe.xadd(f"dpt:stream:cam{k:03d}:frames", f)
        pipe.sadd("dpt:streams", f"cam{k:03d}")
    pipe.execute()
    view = View(redis_server.url, "--write-timeout", "1")
    stop = threading.Event()

    def tick() -> None:  # new entries keep arriving, so every viewer is sent an update several times a second
        k = 0
        while not stop.is_set():
            rd.xadd(f"dpt:stream:cam{k % 150:03d}:frames", entries[k % len(entries)])
            k += 1
            time.sleep(0.05)

    good_events: list[float] = []

    def good_viewer() -> None:  # reads the event stream as a browser does
        with urllib.request.urlopen(view.base + "/api/events", timeout=30) as r:
            while not stop.is_set():
                line = r.readline()
                if not line:
                    return
                if line.startswith(b"event: state"):
                    good_events.append(time.monotonic())

    ticker = threading.Thread(target=tick, daemon=True)
    reader = threading.Thread(target=good_viewer, daemon=True)
    slow = socket.socket()
    try:
        wait_for(lambda: len(view.api()["streams"]) == 152, 30, "the wall of 152 streams")
        ticker.start()
        reader.start()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", view.port))
        slow.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # ... and never reads
        wait_for(lambda: view.api()["viewers"] == 2, 10, "both viewers connected")
        size = len(json.dumps(view.api()))
        assert size > 30_000, size  # the test means something only if updates are large
        rss0 = rss_kib(view.proc.pid)
        wait_for(lambda: "dropping a slow viewer" in view.output, 30, f"the slow viewer dropped\n{view.output}",
                 interval=0.2)
        wait_for(lambda: view.api()["viewers"] == 1, 5, "the slow viewer gone from the count")
        # the server hung up on it: what it had buffered drains, then the connection ends
        slow.settimeout(10)
        try:
            while slow.recv(65536):
                pass
        except ConnectionResetError:
            pass  # aborted: a reset is a hang-up too
        # it held at most its write buffer, never a growing queue of updates
        assert rss_kib(view.proc.pid) - rss0 < 48 * 1024
        # the reading viewer was served all along, and still is
        n = len(good_events)
        wait_for(lambda: len(good_events) >= n + 3, 5, "updates to the reading viewer")
        assert view.alive()
    finally:
        stop.set()
        slow.close()
        ticker.join(5)
        assert view.stop() == 0, view.output


# -- one wrong-typed stream key marks only its own tile ---------------------------------------------------

def test_a_wrong_typed_frames_key_marks_only_its_tile(assets: dict[str, Path], redis_server: RedisServer,
                                                      tmp_path: Path) -> None:
    publish_files(redis_server, assets, tmp_path)
    rd = redis_server.client()
    rd.set("dpt:stream:bad:frames", "x")
    rd.sadd("dpt:streams", "bad")
    view = View(redis_server.url)
    try:
        def settled() -> dict[str, Any] | None:
            data = view.api()
            tiles = {s["id"]: s for s in data["streams"]}
            return data if {"a", "b", "bad"} <= set(tiles) and tiles["a"]["image"] and tiles["b"]["image"] else None

        data = wait_for(settled, 30, "the good tiles to render")
        assert data["redis"] == "ok" and data["error"] is None, data
        tiles = {s["id"]: s for s in data["streams"]}
        assert tiles["bad"]["state"] == "error", tiles["bad"]
        assert "dpt:stream:bad:frames is not a stream" in tiles["bad"]["render_error"], tiles["bad"]
        for sid in ("a", "b"):
            assert tiles[sid]["state"] in ("fresh", "stale") and tiles[sid]["render_error"] is None, tiles[sid]
            code, headers, body = get(f"{view.base}/streams/{sid}/latest.jpg")
            assert code == 200 and headers["X-Dptstream-State"] == "ok", body[:200]
            jpeg_array(body)
        code, _, body = get(f"{view.base}/streams/bad/latest.jpg")
        assert code == 503 and b"dpt:stream:bad:frames is not a stream" in body, body
        # the key mended: the tile recovers
        rd.delete("dpt:stream:bad:frames")
        rd.xadd("dpt:stream:bad:frames", rd.xrange("dpt:stream:a:frames", count=1)[0][1])
        wait_for(lambda: {s["id"]: s for s in view.api()["streams"]}["bad"]["image"], 30, "the mended tile")
        assert {s["id"]: s for s in view.api()["streams"]}["bad"]["render_error"] is None
    finally:
        view.stop()
    assert "Traceback" not in view.output, view.output
    assert view.output.count("dpt:stream:bad:frames") == 1, view.output  # one warning, not one per poll


# -- one legal entry cannot exhaust the view ---------------------------------------------------------------

def _mask_entry(side: int) -> dict[str, bytes]:
    """A legal entry whose mask is ``side`` x ``side`` (three class regions: a few hundred KB of PNG)."""
    mask = np.zeros((side, side), np.uint8)
    mask[:, side // 2:] = 7
    mask[side // 3: side // 2, :] = 3
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    depth = {"kind": "relative_inverse", "min": 0.0, "max": 5.0, "p05": 1.0, "p50": 2.0, "p95": 3.0,
             "per_class": {"0": 1.0, "7": 3.0, "3": 2.0}}
    return {"frame": b"1", "pts": b"0.0", "latency_ms": b"5", "mask": buf.getvalue(), "mask_w": str(side).encode(),
            "mask_h": str(side).encode(), "classes": json.dumps({"0": 0.5, "7": 0.4, "3": 0.1}).encode(),
            "depth": json.dumps(depth).encode()}


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


def test_the_largest_legal_mask_renders_within_the_views_memory_limit(redis_server: RedisServer) -> None:
    import yaml

    docs = list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "view.yaml").read_text()))
    pod = next(d for d in docs if d and d.get("kind") == "Deployment")["spec"]["template"]["spec"]
    limit = pod["containers"][0]["resources"]["limits"]["memory"]
    assert limit == "1Gi", limit
    rd = redis_server.client()
    rd.xadd("dpt:stream:big:frames", _mask_entry(8192))  # 8192 is the largest --mask-size side
    # written by something else: over any legal size (refused from its header, as a real one would be)
    rd.xadd("dpt:stream:huge:frames", {**_mask_entry(64), "mask": png_claiming(12000, 12000)})
    rd.sadd("dpt:streams", "big", "huge")
    view = View(redis_server.url)
    try:
        def rendered() -> dict[str, Any] | None:
            tiles = {s["id"]: s for s in view.api()["streams"]}
            done = tiles.get("big", {}).get("image") and tiles.get("huge", {}).get("render_error")
            return tiles if done else None

        tiles = wait_for(rendered, 120, "both tiles rendered or refused", interval=0.5)
        assert "mask is 12000x12000, over 67 Mpx" in tiles["huge"]["render_error"], tiles["huge"]
        code, _, body = get(f"{view.base}/streams/big/latest.jpg")
        assert code == 200
        assert jpeg_array(body).shape[:2] == (1920, 3840)  # each half at most 1920 on its long side
        code, _, body = get(f"{view.base}/streams/huge/latest.jpg")
        assert code == 503 and b"over 67 Mpx" in body, body
        peak = peak_rss_kib(view.proc.pid)
        # the whole process (Python, aiohttp, redis-py, numpy, PIL) at its peak, well under the pod's limit
        assert peak < 512 * 1024, f"peak RSS {peak // 1024} MiB"
    finally:
        assert view.stop() == 0, view.output
    assert "Traceback" not in view.output and "DecompressionBomb" not in view.output, view.output
