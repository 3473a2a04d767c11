"""End to end, as a user runs it: `dptstream run` on real H.264 clips into a real redis-server, checked
against the transformers oracle, with /metrics scraped over real HTTP."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.support.oracle import Oracle, decode_rgb
from tests.support.servers import ROOT, RedisServer, cli, free_port, model_args, one_error_line

pytestmark = pytest.mark.slow


def entries(r: Any, sid: str, prefix: str = "dpt") -> list[dict[str, Any]]:
    out = []
    for _id, f in r.xrange(f"{prefix}:stream:{sid}:frames"):
        out.append({k.decode(): v for k, v in f.items()})
    return out


def png_mask(b: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(b))
    assert im.mode == "L" and im.format == "PNG"
    return np.asarray(im)


def test_every_frame_reaches_redis_once_and_masks_match_the_oracle(assets: dict[str, Path],
                                                                    redis_server: RedisServer) -> None:
    r = redis_server.client()
    sub = r.pubsub()
    sub.subscribe("dpt:stream:cam720:events")
    sub.get_message(timeout=1)
    events: list[dict[str, Any]] = []
    done = threading.Event()

    def listen() -> None:
        while not done.is_set():
            m = sub.get_message(timeout=0.2)
            if m and m["type"] == "message":
                events.append(json.loads(m["data"]))

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    p = cli("run", "-s", f"cam720={assets['clip720']}", "-s", str(assets["clip360"]), *model_args(assets),
            "--sink", redis_server.url, "--metrics-port", "-1", "--batch-size", "4")
    time.sleep(0.5)
    done.set()
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr

    meta = r.hgetall("dpt:meta")
    assert meta[b"schema"] == b"1"
    labels = json.loads(meta[b"labels"])
    assert len(labels) == 150 and labels["0"] == "wall"
    assert set(json.loads(meta[b"models"])) == {"segmentation", "depth"}
    assert r.smembers("dpt:streams") == {b"cam720", b"clip360"}

    oracle = Oracle(assets["segmentation"], assets["depth"])
    for sid, clip, (mw, mh) in (("cam720", assets["clip720"], (192, 108)), ("clip360", assets["clip360"], (192, 108))):
        frames = decode_rgb(clip)
        got = entries(r, sid)
        assert [int(e["frame"]) for e in got] == list(range(len(frames)))  # every frame, once, in order
        for e in got:
            assert int(e["mask_w"]) == mw and int(e["mask_h"]) == mh
            assert float(e["ts"]) > 1.7e9 and float(e["latency_ms"]) > 0
            classes = json.loads(e["classes"])
            assert sum(classes.values()) == pytest.approx(1.0, abs=1e-3)
            depth = json.loads(e["depth"])
            assert {"min", "max", "mean", "p05", "p50", "p95", "grid", "per_class", "kind"} <= set(depth)
            assert depth["kind"] == "relative_inverse" and len(depth["grid"]) == 4
            assert set(depth["per_class"]) == set(classes)
        pts = [float(e["pts"]) for e in got]
        assert pts == sorted(pts) and pts[1] > pts[0]
        for i in range(0, len(frames), 5):  # every 5th frame against the transformers oracle
            mask = png_mask(got[i]["mask"])
            assert mask.shape == (mh, mw)
            ref = oracle.mask(frames[i], (mh, mw))
            agree = float((mask == ref).mean())
            assert agree >= 0.985, f"{sid} frame {i}: mask agreement {agree:.4f}"
            assert json.loads(got[i]["classes"]) == pytest.approx(
                {str(c): float((mask == c).mean()) for c in np.unique(mask)}, abs=1e-5)
            dref = oracle.depth_map(frames[i], (mh, mw))
            span = float(dref.max() - dref.min())
            d = json.loads(got[i]["depth"])
            assert abs(d["mean"] - float(dref.mean())) <= 0.02 * span
            assert abs(d["p50"] - float(np.median(dref))) <= 0.02 * span
    assert len(events) == 24 and sorted(e["frame"] for e in events) == list(range(24))
    assert "mask" not in events[0] and events[0]["stream"] == "cam720" and "depth" in events[0]


def test_second_run_resumes_and_publishes_nothing_twice(assets: dict[str, Path], redis_server: RedisServer) -> None:
    args = ["run", "-s", f"c={assets['clip360']}", *model_args(assets), "--sink", redis_server.url,
            "--metrics-port", "-1", "--tasks", "segmentation"]
    assert cli(*args).returncode == 0
    p = cli(*args)
    assert p.returncode == 0, p.stderr
    assert "already published" in p.stderr
    r = redis_server.client()
    assert [int(e["frame"]) for e in entries(r, "c")] == list(range(20))
    assert "depth" not in entries(r, "c")[0]  # --tasks segmentation only
    p = cli(*args, "--no-resume")
    assert p.returncode == 0
    assert len(entries(r, "c")) == 40


@pytest.mark.parametrize("spec, size", [("network", (192, 192)), ("source", (640, 360)), ("100x60", (100, 60))])
def test_mask_size_options_match_the_oracle(assets: dict[str, Path], tmp_path: Path, spec: str,
                                            size: tuple[int, int]) -> None:
    out = tmp_path / "out"
    p = cli("run", "-s", f"v={assets['clip360']}", *model_args(assets), "--sink", f"dir:{out}",
            "--metrics-port", "-1", "--mask-size", spec, "--tasks", "segmentation")
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in (out / "v.jsonl").read_text().splitlines()]
    assert [x["frame"] for x in lines] == list(range(20))
    oracle = Oracle(assets["segmentation"], assets["depth"])
    frames = decode_rgb(assets["clip360"])
    for i in (0, 10, 19):
        mask = np.asarray(Image.open(out / lines[i]["mask"]))
        assert (mask.shape[1], mask.shape[0]) == size == (lines[i]["mask_w"], lines[i]["mask_h"])
        agree = float((mask == oracle.mask(frames[i], (size[1], size[0]))).mean())
        assert agree >= 0.985, f"{spec} frame {i}: {agree:.4f}"


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def test_metrics_are_served_and_pass_promtool(assets: dict[str, Path], redis_server: RedisServer,
                                              tmp_path: Path) -> None:
    clip = tmp_path / "loop.mp4"
    shutil.copy(assets["clip360"], clip)
    cfg = tmp_path / "c.yaml"
    port = free_port()
    cfg.write_text(f"sources:\n  - {{id: looped, uri: {clip}, loop: true, realtime: true}}\n"
                   f"metrics: {{port: {port}, host: 127.0.0.1}}\n")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(cfg), *model_args(assets),
                             "--sink", redis_server.url], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        text = ""
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                text = scrape(port)
                if 'dptstream_frames_total{stage="published",stream="looped"}' in text:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        for name in ("dptstream_frames_total", "dptstream_stage_seconds_bucket", "dptstream_latency_seconds_bucket",
                     "dptstream_queue_depth", "dptstream_batch_size_bucket", "dptstream_stream_up",
                     "dptstream_build_info"):
            assert name in text, name
        assert 'dptstream_stream_up{stream="looped"} 1.0' in text
        # the CPU default is OpenVINO, and build_info says which precision runs per task
        import openvino as ov

        from engines.openvino_engine import cpu_supports_bf16

        depth = "bf16" if cpu_supports_bf16(ov.Core()) else "fp32"
        assert 'backends="segmentation=openvino-cpu-fp32,depth=openvino-cpu-' + depth + '"' in text, text
        assert f'precisions="segmentation=fp32,depth={depth}"' in text
        assert 'queue="decoded:looped"' in text
        promtool = shutil.which("promtool")
        assert promtool, "promtool missing (Debian package prometheus)"
        chk = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert chk.returncode == 0, chk.stdout + chk.stderr
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


def test_sigterm_mid_run_loses_no_decoded_frame(assets: dict[str, Path], redis_server: RedisServer,
                                                tmp_path: Path) -> None:
    from pipeline.sample import make_clip

    clip = make_clip(tmp_path / "long.mp4", frames=150, width=640, height=360, seed=3)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "-s", f"long={clip}", *model_args(assets),
                             "--sink", redis_server.url, "--metrics-port", str(port)],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    r = redis_server.client()
    deadline = time.time() + 120
    while time.time() < deadline and r.xlen("dpt:stream:long:frames") < 10:
        time.sleep(0.1)
    text = scrape(port)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    published = [int(e["frame"]) for e in entries(r, "long")]
    decoded = int(re.search(r"long: (\d+) frames decoded", err).group(1))  # type: ignore[union-attr]
    assert 10 <= len(published) < 150, "the stop came too late to test anything"
    assert published == list(range(len(published)))  # no gap
    assert len(published) == decoded, err  # every decoded frame was drained to Redis
    assert 'dptstream_frames_total{stage="decoded",stream="long"}' in text


def test_a_different_file_under_the_same_id_is_refused_not_skipped(assets: dict[str, Path], tmp_path: Path,
                                                                    redis_server: RedisServer) -> None:
    from pipeline.sample import make_clip

    day1 = make_clip(tmp_path / "day1" / "cam.mp4", frames=8, width=320, height=180, seed=1)
    day2 = make_clip(tmp_path / "day2" / "cam.mp4", frames=10, width=320, height=180, seed=2)
    run = ["--sink", redis_server.url, "--metrics-port", "-1", *model_args(assets)]
    p = cli("run", "-s", str(day1), *run)
    assert p.returncode == 0, p.stderr
    r = redis_server.client()
    prog = {k.decode(): v.decode() for k, v in r.hgetall("dpt:stream:cam:progress").items()}
    assert prog["frame"] == "7" and prog["source_path"] == str(day1.resolve())
    assert prog["source_size"] == str(day1.stat().st_size) and len(prog["source_sha256_1mib"]) == 64
    assert float(prog["source_duration"]) > 0 and "source_mtime" in prog

    # refused before any model loads: a missing model would otherwise be the error (exit 1)
    p = cli("run", "-s", str(day2), "--sink", redis_server.url, "--metrics-port", "-1",
            "-m", f"segmentation={tmp_path / 'no-model'}")
    assert p.returncode == 2, p.stderr
    line = one_error_line(p.stderr)
    assert "day1" in line and "day2" in line and "--no-resume" in line and "--source" in line
    assert r.xlen("dpt:stream:cam:frames") == 8  # nothing published, nothing skipped in silence

    copy = tmp_path / "copy" / "cam.mp4"  # the same file elsewhere still resumes
    copy.parent.mkdir()
    shutil.copy(day1, copy)
    p = cli("run", "-s", str(copy), *run)
    assert p.returncode == 0 and "8 already published" in p.stderr, p.stderr

    p = cli("run", "-s", str(day2), "--no-resume", *run)
    assert p.returncode == 0, p.stderr
    prog = {k.decode(): v.decode() for k, v in r.hgetall("dpt:stream:cam:progress").items()}
    assert prog["frame"] == "9" and prog["source_path"] == str(day2.resolve())


def checkpoint_predicting(path: Path, num_labels: int, cls: int) -> Path:
    import torch
    from transformers import DPTForSemanticSegmentation

    from pipeline.sample import make_checkpoint

    make_checkpoint(path, "segmentation", num_labels=num_labels)
    model = DPTForSemanticSegmentation.from_pretrained(path)
    last = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[cls] = 10.0
    model.save_pretrained(path)
    return path


def test_300_classes_publish_class_260_in_a_16_bit_mask(assets: dict[str, Path], tmp_path: Path,
                                                         redis_server: RedisServer) -> None:
    ckpt = checkpoint_predicting(tmp_path / "seg300", 300, 260)
    p = cli("run", "-s", f"big={assets['clip360']}", "-m", f"segmentation={ckpt}", "--tasks", "segmentation",
            "--sink", redis_server.url, "--sink", f"dir:{tmp_path / 'out'}", "--metrics-port", "-1")
    assert p.returncode == 0, p.stderr
    r = redis_server.client()
    assert r.hget("dpt:meta", "mask_dtype") == b"uint16"
    assert json.loads(r.hget("dpt:meta", "labels"))["260"] == "class_260"
    entries = r.xrange("dpt:stream:big:frames")
    assert len(entries) == 20
    for _, f in entries:
        assert json.loads(f[b"classes"]) == {"260": 1.0}
        mask = np.asarray(Image.open(io.BytesIO(f[b"mask"])))
        assert mask.dtype == np.uint16 and int(mask.min()) == int(mask.max()) == 260
    png = np.asarray(Image.open(tmp_path / "out" / "big" / "000000.png"))
    assert int(png.max()) == 260


def test_150_classes_stay_uint8_in_meta(assets: dict[str, Path], redis_server: RedisServer) -> None:
    p = cli("run", "-s", f"small={assets['clip360']}", *model_args(assets), "--tasks", "segmentation",
            "--sink", redis_server.url, "--metrics-port", "-1")
    assert p.returncode == 0, p.stderr
    r = redis_server.client()
    assert r.hget("dpt:meta", "mask_dtype") == b"uint8"
    _, f = r.xrange("dpt:stream:small:frames", count=1)[0]
    assert np.asarray(Image.open(io.BytesIO(f[b"mask"]))).dtype == np.uint8


def test_file_uris_are_percent_decoded(assets: dict[str, Path], tmp_path: Path) -> None:
    spaced = tmp_path / "with space.mp4"
    shutil.copy(assets["clip360"], spaced)
    p = cli("run", "-s", f"file://{tmp_path}/with%20space.mp4", *model_args(assets),
            "--sink", f"dir:{tmp_path / 'out'}", "--metrics-port", "-1")
    assert p.returncode == 0, p.stderr
    assert len((tmp_path / "out" / "with_space.jsonl").read_text().splitlines()) == 20


def test_rotated_phone_video_gives_portrait_masks_and_records_the_rotation(assets: dict[str, Path], tmp_path: Path,
                                                                           redis_server: RedisServer) -> None:
    import av

    from pipeline.sample import make_frames

    clip = tmp_path / "phone.mp4"
    with av.open(str(clip), "w") as out:  # landscape coded frames, "turn 90° counter-clockwise" to display
        s = out.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = 320, 180, "yuv420p"
        s.set_display_rotation(90)
        for img in make_frames(6, 320, 180, seed=3):
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    p = cli("run", "-s", str(clip), *model_args(assets), "--sink", redis_server.url, "--metrics-port", "-1")
    assert p.returncode == 0, p.stderr
    r = redis_server.client()
    _, f = r.xrange("dpt:stream:phone:frames", count=1)[0]
    assert (int(f[b"mask_w"]), int(f[b"mask_h"])) == (108, 192)  # portrait, long side = the 192 network side
    assert r.hget("dpt:stream:phone:progress", "rotation") == b"90"
