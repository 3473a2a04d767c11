"""Visual output: the ``video:PATH`` sink (MP4: mask over frame | depth colours) and ``dptstream snapshot``."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from tests.support.entries import split_mask_entry
from tests.support.servers import RedisServer, cli, model_args


def decode_all(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def entries(r: Any, sid: str, prefix: str = "dpt") -> list[dict[str, bytes]]:
    return [{k.decode(): v for k, v in f.items()} for _id, f in r.xrange(f"{prefix}:stream:{sid}:frames")]


def turbo_rank(rgb: np.ndarray) -> np.ndarray:
    """Invert the turbo colour map: each pixel -> index 0..255 of the nearest table colour."""
    from pipeline.overlay import TURBO

    flat = rgb.reshape(-1, 3).astype(np.int32)
    d = ((flat[:, None, :] - TURBO[None, :, :].astype(np.int32)) ** 2).sum(-1)
    return d.argmin(1).reshape(rgb.shape[:2])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a.ravel())).astype(float)
    rb = np.argsort(np.argsort(b.ravel())).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


# -- pure rendering ----------------------------------------------------------------------------------------

def test_rendering_helpers() -> None:
    from pipeline.overlay import PALETTE, TURBO, blend_mask, colorize_depth, panel_size

    assert panel_size(1280, 720) == (960, 540)
    assert all(v % 2 == 0 for v in panel_size(321, 181))  # even for 4:2:0
    assert panel_size(1080, 1920) == (540, 960)
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (4, 1))
    c = colorize_depth(ramp, 0.0, 1.0)
    assert (c[0, 0] == TURBO[0]).all() and (c[0, -1] == TURBO[255]).all()  # larger (nearer) -> red end
    assert (colorize_depth(ramp, 0.0, 1.0, near_is_large=False)[0, 0] == TURBO[255]).all()
    img = np.full((2, 2, 3), 100, np.uint8)
    mask = np.array([[0, 1], [2, 3]], np.uint8)
    out = blend_mask(img, mask, 0.5)
    assert np.abs(out.astype(int) - (100 + PALETTE[mask].astype(int)) / 2).max() <= 0.5
    assert len({tuple(p) for p in PALETTE[:150]}) == 150  # every ADE20K class has its own colour


def test_snapshot_rendering_without_thumbnail_uses_mask_and_depth_summary() -> None:
    from pipeline.overlay import PALETTE, render_entry

    depth = {"kind": "relative_inverse", "min": 0.0, "max": 10.0, "mean": 5, "p05": 1, "p50": 5, "p95": 9,
             "grid": [[1, 2], [3, 4]], "per_class": {"0": 2.0, "7": 9.0}}
    fields = split_mask_entry(54, 96, 7, depth, frame=b"3")
    pic = render_entry(fields, {0: "wall", 7: "bed"})
    h, w = pic.shape[:2]
    assert (w, h) == (2 * 480, 270)  # mask scaled up to a 480 long side, two halves
    assert (pic[200, 100] == PALETTE[0]).all() and (pic[200, 380] == PALETTE[7]).all()
    right = pic[:, 480:]
    assert turbo_rank(right[100:101, 300:301])[0, 0] > turbo_rank(right[100:101, 100:101])[0, 0]  # bed nearer
    # depth only (no mask): the coarse grid, nearest cell highest
    only = render_entry({"frame": b"1", "depth": json.dumps(depth).encode()}, {})
    ranks = turbo_rank(only[[60, 60, 200, 200], [100, 380, 100, 380]][None])[0]
    assert list(np.argsort(ranks)) == [0, 1, 2, 3]


# -- the video sink and snapshot, through the CLI ----------------------------------------------------------

@pytest.mark.slow
def test_video_sink_and_snapshot_show_mask_over_frame_and_depth(assets: dict[str, Path], redis_server: RedisServer,
                                                                tmp_path: Path) -> None:
    from pipeline.overlay import PALETTE, panel_size
    from pipeline.sample import make_clip

    small = make_clip(tmp_path / "small.mp4", frames=14, width=320, height=180, seed=2)
    config = tmp_path / "thumb.yaml"
    config.write_text("redis:\n  thumbnail: 160\n")
    out = tmp_path / "video"
    r = cli("run", str(config), "-s", str(small), "-s", str(assets["clip360"]), "--sink", redis_server.url,
            "--sink", f"video:{out}", *model_args(assets), "--device", "cpu", "--metrics-port", "-1")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["clip360.mp4", "small.mp4"]  # no *.part left
    rd = redis_server.client()
    for sid, clip in (("small", small), ("clip360", assets["clip360"])):
        source = decode_all(clip)
        video = decode_all(out / f"{sid}.mp4")
        assert len(video) == len(source) == len(entries(rd, sid)), sid  # every frame, once
        sh, sw = source[0].shape[:2]
        pw, ph = panel_size(sw, sh)
        assert video[0].shape == (ph, 2 * pw, 3)
        for k in (0, len(source) // 2, len(source) - 1):
            e = entries(rd, sid)[k]
            assert int(e["frame"]) == k
            mask = np.asarray(Image.open(io.BytesIO(e["mask"])))
            m = np.asarray(Image.fromarray(mask).resize((pw, ph), Image.Resampling.NEAREST))
            frame = np.asarray(Image.fromarray(source[k]).resize((pw, ph), Image.Resampling.BILINEAR))
            expected = (frame.astype(float) + PALETTE[m].astype(float)) / 2
            left, right = video[k][:, :pw].astype(float), video[k][:, pw:]
            body = np.s_[80:, :]  # below the legend
            err = np.abs(left[body] - expected[body]).mean()
            assert err < 12, f"{sid} frame {k}: overlay differs from frame/2 + mask colours/2 by {err:.1f}"
            assert np.abs(left[body] - frame[body]).mean() > 2 * err  # the mask really is on it
            # depth half: turbo colours whose rank follows the published near-field grid
            grid = np.asarray(json.loads(e["depth"])["grid"])
            g = grid.shape[0]
            rank = turbo_rank(right[::2, ::2])
            cells = np.array([[np.percentile(rank[i * rank.shape[0] // g:(i + 1) * rank.shape[0] // g,
                                                  j * rank.shape[1] // g:(j + 1) * rank.shape[1] // g], 90)
                               for j in range(g)] for i in range(g)])
            assert spearman(cells, grid) > 0.8, f"{sid} frame {k}: depth colours do not follow the depth grid"

    # snapshot: the latest entry, mask over the stored thumbnail, beside the depth picture
    png = tmp_path / "snap.png"
    s = cli("snapshot", "small", "-o", str(png), "--redis", redis_server.url)
    assert s.returncode == 0, s.stderr
    assert s.stdout.strip() == f"{png}: small frame 13, 960x270"
    pic = np.asarray(Image.open(png).convert("RGB"))
    assert pic.shape == (270, 960, 3)
    last = np.asarray(Image.fromarray(decode_all(small)[-1]).resize((480, 270), Image.Resampling.BILINEAR))
    left = pic[80:250, :480].astype(float).mean(-1)
    assert np.corrcoef(left.ravel(), last[80:250].astype(float).mean(-1).ravel())[0, 1] > 0.4  # the frame shows
    thumb = Image.open(io.BytesIO(entries(rd, "small")[-1]["thumb"]))
    assert thumb.format == "JPEG" and max(thumb.size) == 160

    missing = cli("snapshot", "nope", "--redis", redis_server.url)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"dptstream: error: no entries for stream 'nope' under dpt: at {redis_server.url}; "
        "known streams: clip360, small"]


@pytest.mark.slow
def test_video_sink_single_file_alone_and_its_limits(assets: dict[str, Path], redis_server: RedisServer,
                                                     tmp_path: Path) -> None:
    from pipeline.sample import make_clip

    clip = make_clip(tmp_path / "one.mp4", frames=12, width=320, height=180, seed=5)
    target = tmp_path / "out" / "seg-only.mp4"
    r = cli("run", "-s", str(clip), "--sink", f"video:{target}", "--tasks", "segmentation", *model_args(assets),
            "--device", "cpu", "--metrics-port", "-1")
    assert r.returncode == 0, r.stderr
    assert "published 12 frames" in r.stderr
    video = decode_all(target)
    assert len(video) == 12 and video[0].shape == (180, 320, 3)  # segmentation only: one half

    two = cli("run", "-s", str(clip), "-s", f"b={clip}", "--sink", f"video:{target}", *model_args(assets),
              "--device", "cpu", "--metrics-port", "-1")
    assert two.returncode == 2
    assert two.stderr.strip().splitlines() == [
        f"dptstream: error: video:{target} is one file but there are 2 sources: use video:DIR for one MP4 "
        "per stream"]
    w = cli("worker", "--sink", redis_server.url, "--sink", f"video:{target}", *model_args(assets),
            "--device", "cpu", "--metrics-port", "-1", "--until-empty")
    assert w.returncode == 2
    assert w.stderr.strip().splitlines()[-1] == (
        f"dptstream: error: video:{target} writes one file; a worker runs many jobs: use video:DIR")
