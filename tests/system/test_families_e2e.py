"""Each supported DPT-family architecture end to end, as a user runs it: ``dptstream run`` on a real H.264 clip
into a real redis-server with ``redis.depth_map: true``; every frame published, the published 16-bit
``depth_map`` decoded and compared with transformers' processor + ``AutoModelForDepthEstimation`` +
``post_process_depth_estimation`` at the mask size; ``kind`` right. Bad checkpoints: one line, exit 1,
nothing published in Redis."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline.checkpoints import (
    DEPTH_FAMILIES,
    FAMILIES,
    make_family_checkpoint,
    make_glpn_checkpoint,
    make_vit_classifier_checkpoint,
    rename_weight_key,
    truncate_weights,
)
from pipeline.sample import make_clip
from tests.support.families import CORR_MIN, P99_MAX, DepthOracle, agreement, decode_depth_png
from tests.support.oracle import decode_rgb
from tests.support.servers import RedisServer, cli

pytestmark = pytest.mark.slow
FRAMES = 10


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("fam-e2e") / "cam.mp4", frames=FRAMES, width=1280, height=720, seed=0)


@pytest.fixture(scope="module")
def depth_map_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fam-cfg") / "depth-map.yaml"
    path.write_text("redis:\n  depth_map: true\n")
    return path


def entries(r: Any, sid: str) -> list[dict[str, Any]]:
    return [{k.decode(): v for k, v in f.items()} for _id, f in r.xrange(f"dpt:stream:{sid}:frames")]


@pytest.mark.parametrize("family", DEPTH_FAMILIES)
def test_family_publishes_every_frame_with_a_depth_map_like_transformers(
        family: str, clip: Path, depth_map_config: Path, redis_server: RedisServer, tmp_path: Path) -> None:
    ckpt = make_family_checkpoint(tmp_path / family, family)
    p = cli("run", str(depth_map_config), "-s", f"cam={clip}", "-m", f"depth={ckpt}", "--tasks", "depth",
            "--sink", redis_server.url, "--sink", f"dir:{tmp_path / 'out'}", "--metrics-port", "-1",
            "--batch-size", "4")
    assert p.returncode == 0, p.stderr
    got = entries(redis_server.client(), "cam")
    frames = decode_rgb(clip)
    assert [int(e["frame"]) for e in got] == list(range(len(frames))) and len(frames) == FRAMES
    oracle = DepthOracle(ckpt)
    kind = "metric" if FAMILIES[family].metric else "relative_inverse"
    worst = (1.0, 0.0)
    for i, e in enumerate(got):
        depth = json.loads(e["depth"])
        assert depth["kind"] == kind
        im = Image.open(io.BytesIO(e["depth_map"]))
        assert im.format == "PNG" and im.mode.startswith("I;16")
        mh, mw = np.asarray(im).shape
        assert mw >= mh and abs(mw / mh - 1280 / 720) < 0.05  # the mask-size rule: aspect kept
        ours = decode_depth_png(e["depth_map"], kind, depth["min"], depth["max"])
        ref = oracle.depth_map(frames[i], (mh, mw))
        corr, p99 = agreement(ours, ref)
        worst = (min(worst[0], corr), max(worst[1], p99))
        assert corr >= CORR_MIN and p99 <= P99_MAX, (family, i, corr, p99)
        if kind == "metric":
            assert abs(depth["p50"] - float(np.median(ref))) <= 0.02 * float(ref.max() - ref.min())
        # the dir: sink writes the same PNG next to the mask
        assert (tmp_path / "out" / "cam" / f"{i:06d}.depth.png").read_bytes() == e["depth_map"]
    print(f"{family}: depth map vs transformers on {len(got)} frames: min corr {worst[0]:.5f}, "
          f"max p99 error {worst[1]:.2%} of range")


def test_metric_summary_has_nearest_per_class_in_metres(clip: Path, redis_server: RedisServer,
                                                        tmp_path: Path) -> None:
    seg = make_family_checkpoint(tmp_path / "seg", "dpt-seg")
    metric = make_family_checkpoint(tmp_path / "metric", "depth-anything-v2-metric")
    p = cli("run", "-s", f"cam={clip}", "-m", f"segmentation={seg}", "-m", f"depth={metric}",
            "--sink", redis_server.url, "--metrics-port", "-1")
    assert p.returncode == 0, p.stderr
    got = entries(redis_server.client(), "cam")
    assert len(got) == FRAMES
    for e in got:
        d = json.loads(e["depth"])
        assert d["kind"] == "metric" and 0.0 <= d["min"] <= d["p50"] <= d["max"] <= 20.0
        assert set(d["per_class"]) == set(json.loads(e["classes"]))
        for v in d["per_class"].values():
            assert set(v) == {"median", "nearest"} and d["min"] <= v["nearest"] <= v["median"] <= d["max"]
        assert min(min(row) for row in d["grid"]) >= d["min"]
        assert "depth_map" not in e  # opt-in only
    show = cli("show", "--redis", redis_server.url, "-n", "1")
    assert show.returncode == 0, show.stderr
    assert " m, median " in show.stdout and "(metric)" in show.stdout


@pytest.mark.parametrize("bad", ["glpn", "vit", "empty", "truncated", "renamed", "seg-as-depth", "depth-as-seg"])
def test_bad_checkpoint_is_one_line_exit_1_and_nothing_published(bad: str, clip: Path, redis_server: RedisServer,
                                                                 tmp_path: Path) -> None:
    task = "depth"
    if bad == "glpn":
        path = make_glpn_checkpoint(tmp_path / bad)
    elif bad == "vit":
        path, task = make_vit_classifier_checkpoint(tmp_path / bad), "segmentation"
    elif bad == "empty":
        path = tmp_path / bad
        path.mkdir()
    elif bad == "truncated":
        path = truncate_weights(make_family_checkpoint(tmp_path / bad, "depth-anything-v2"))
    elif bad == "renamed":
        path = make_family_checkpoint(tmp_path / bad, "depth-anything-v2")
        rename_weight_key(path)
    elif bad == "seg-as-depth":
        path = make_family_checkpoint(tmp_path / bad, "dpt-seg")
    else:
        path, task = make_family_checkpoint(tmp_path / bad, "depth-anything-v2"), "segmentation"
    p = cli("run", "-s", f"cam={clip}", "-m", f"{task}={path}", "--tasks", task, "--sink", redis_server.url,
            "--metrics-port", "-1")
    assert p.returncode == 1, (p.returncode, p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("dptstream: error: "), p.stderr
    assert "Traceback" not in p.stderr
    expect = {"glpn": "'glpn'", "vit": "'vit'", "empty": "is empty", "truncated": "truncated or corrupt",
              "renamed": "1 missing keys", "seg-as-depth": "segmentation checkpoint",
              "depth-as-seg": "'depth_anything'"}[bad]
    assert expect in lines[0], lines[0]
    assert redis_server.client().keys("*") == []  # nothing published, not even the meta hash


@pytest.fixture(scope="module")
def unresized_dinov2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DINOv2-DPT whose processor does not resize, as facebook/dpt-dinov2-*'s say (do_resize false, do_pad
    true, size_divisor 14): its network input is the source's own size, padded to multiples of 14."""
    path = make_family_checkpoint(tmp_path_factory.mktemp("dinov2-unresized") / "ckpt", "dpt-dinov2")
    cfg_path = path / "preprocessor_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(do_resize=False, do_pad=True, size_divisor=14)
    cfg_path.write_text(json.dumps(cfg))
    return path


def test_a_network_shape_beyond_the_machine_is_refused_in_one_line(unresized_dinov2: Path, tmp_path: Path,
                                                                     redis_server: RedisServer) -> None:
    """A 4K file through a processor that does not resize: a 3850x2170 network input, refused before any frame
    runs with one line naming the shape, the estimate and the way out."""
    uhd = make_clip(tmp_path / "uhd.mp4", frames=2, width=3840, height=2160, seed=1)
    p = cli("run", "-s", f"cam={uhd}", "-m", f"depth={unresized_dinov2}", "--tasks", "depth",
            "--sink", redis_server.url, "--metrics-port", "-1", "--batch-size", "256")
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("dptstream: error: ")]
    assert len(lines) == 1, p.stderr
    assert "3850x2170" in lines[0] and "GiB" in lines[0] and "--max-side" in lines[0], lines[0]
    assert redis_server.client().xlen("dpt:stream:cam:frames") == 0  # nothing published


def test_max_side_resizes_before_a_processor_that_does_not_resize(unresized_dinov2: Path, tmp_path: Path,
                                                                   redis_server: RedisServer) -> None:
    """Each source's network shape is logged: the source's own size padded to 14 without ``--max-side``, the
    source resized to the longest side given (then padded) with it; every frame is published either way."""
    small = make_clip(tmp_path / "small.mp4", frames=3, width=320, height=180, seed=2)
    for sid, extra, shape in (("full", (), "322x182"), ("bounded", ("--max-side", "98"), "98x56")):
        p = cli("run", "-s", f"{sid}={small}", "-m", f"depth={unresized_dinov2}", "--tasks", "depth",
                "--sink", redis_server.url, "--metrics-port", "-1", *extra)
        assert p.returncode == 0, p.stderr
        assert f"source '{sid}' (320x180): depth network input {shape}" in p.stderr, p.stderr
        assert len(entries(redis_server.client(), sid)) == 3
