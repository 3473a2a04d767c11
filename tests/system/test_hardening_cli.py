"""Issue 10 through the command line, as a user runs it (subprocess, real redis-server, real clips, tiny models):
resume refuses another file under the same id (item 1), > 256 classes (2), SIGTERM while Redis is down (11),
usage errors (12), flags and values checked before any model loads (13), file:// and network schemes (16)."""

from __future__ import annotations

import http.server
import io
import json
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.servers import RedisServer, cli, cli_process, free_port, model_args, one_error_line

pytestmark = pytest.mark.slow


# -- item 1 -------------------------------------------------------------------------------------------------
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


# -- item 2 -------------------------------------------------------------------------------------------------
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


@pytest.mark.parametrize("sink", ["dir", "redis"])
def test_more_than_65536_labels_are_refused_when_the_checkpoint_loads(assets: dict[str, Path], tmp_path: Path,
                                                                      redis_server: RedisServer, sink: str) -> None:
    """Class ids past 65535 cannot be published in a 16-bit mask: refused at load, whatever the sink."""
    from pipeline.sample import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "seg70k", "segmentation", image_size=32, num_labels=70000)
    out = tmp_path / "out"
    target = redis_server.url if sink == "redis" else f"dir:{out}"
    p = cli("run", "-s", f"big={assets['clip360']}", "-m", f"segmentation={ckpt}", "--tasks", "segmentation",
            "--batch-size", "1", "--mask-size", "16x16", "--sink", target, "--metrics-port", "-1")
    assert p.returncode == 1, p.stderr
    line = one_error_line(p.stderr)
    assert str(ckpt) in line and "70000 labels" in line and "65,536" in line, line
    assert "unexpected" not in line
    assert not list(out.rglob("*.png")) and not list(out.rglob("*.jsonl"))
    assert redis_server.client().keys("*") == []  # nothing published, not even dpt:meta


def proc_with(ckpt: Path, path: Path, **fields: object) -> Path:
    shutil.copytree(ckpt, path)
    cfg = json.loads((path / "preprocessor_config.json").read_text())
    (path / "preprocessor_config.json").write_text(json.dumps({**cfg, **fields}))
    return path


@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_a_zero_image_std_is_refused_naming_the_file(assets: dict[str, Path], tmp_path: Path,
                                                     redis_server: RedisServer, task: str) -> None:
    ckpt = proc_with(assets[task], tmp_path / "zero-std", image_std=[0, 0, 0])
    p = cli("run", "-s", f"cam={assets['clip360']}", "-m", f"{task}={ckpt}", "--tasks", task,
            "--sink", redis_server.url, "--metrics-port", "-1")
    assert p.returncode == 1, p.stderr
    line = one_error_line(p.stderr)
    assert str(ckpt / "preprocessor_config.json") in line and "image_std" in line, line
    assert redis_server.client().keys("*") == []


def test_a_label_with_a_newline_is_one_line_everywhere(assets: dict[str, Path], tmp_path: Path,
                                                       redis_server: RedisServer) -> None:
    """Control characters in ``id2label`` become spaces when the checkpoint loads: the overlay video, snapshot
    and ``dpt:meta`` all get one-line labels."""
    from pipeline.sample import make_clip

    ckpt = tmp_path / "seg-nl"
    shutil.copytree(assets["segmentation"], ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["id2label"] = {k: f"bad\nlabel\t{k}\r" for k in cfg["id2label"]}
    cfg["label2id"] = {v: int(k) for k, v in cfg["id2label"].items()}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    clip = make_clip(tmp_path / "small.mp4", frames=10, width=320, height=180, seed=2)
    out = tmp_path / "video"
    p = cli("run", "-s", f"cam={clip}", "-m", f"segmentation={ckpt}", "-m", f"depth={assets['depth']}",
            "--sink", redis_server.url, "--sink", f"video:{out}", "--metrics-port", "-1")
    assert p.returncode == 0, p.stderr
    assert "error" not in p.stderr
    assert (out / "cam.mp4").stat().st_size > 0
    labels = json.loads(redis_server.client().hget("dpt:meta", "labels"))
    assert labels["0"] == "bad label 0"
    assert not any(ch in v for v in labels.values() for ch in "\n\r\t")
    s = cli("snapshot", "cam", "-o", str(tmp_path / "snap.png"), "--redis", redis_server.url)
    assert s.returncode == 0, s.stderr
    show = cli("show", "--redis", redis_server.url, "-n", "1")
    assert show.returncode == 0, show.stderr
    assert "bad label" in show.stdout and "bad\n" not in show.stdout


# -- item 11 ------------------------------------------------------------------------------------------------
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


# -- item 12 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["run", "--bogus"], "No such option: --bogus"),
    (["run", "--batch-size", "abc"], "Invalid value for '--batch-size'"),
    (["nosuchcommand"], "No such command 'nosuchcommand'"),
    (["show", "-n", "-5"], "Invalid value for '--count' / '-n'"),
])
def test_usage_errors_exit_2_with_clicks_message(args: list[str], message: str) -> None:
    p = cli(*args)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr and "unexpected" not in p.stderr and "Traceback" not in p.stderr


# -- item 13 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, expect", [
    (["--batch-size", "0"], "engine.batch_size"),
    (["--tasks", ""], "--tasks is empty"),
    (["--mask-size", "0x0"], "invalid mask size '0x0'"),
    (["--mask-size", "99999x99999"], "invalid mask size '99999x99999'"),
    (["--sink", "redis://127.0.0.1:99999/0"], "port must be a number in 1..65535"),
    (["--metrics-port", "70000"], "metrics.port"),
])
def test_bad_flags_fail_before_any_model_loads(assets: dict[str, Path], tmp_path: Path, flags: list[str],
                                                expect: str) -> None:
    # the model does not exist: a flag that passed validation would fail later, on the model, with exit 1
    p = cli("run", "-s", str(assets["clip360"]), "-m", f"segmentation={tmp_path / 'none'}", *flags)
    assert p.returncode == 2, p.stderr
    assert expect in one_error_line(p.stderr)


# the later sweep: flags of the other commands, given as 0 or "" or out of range, are usage errors up front
@pytest.mark.parametrize("args, expect", [
    (["bench", "--device", "cpu", "--batch-sizes", ""], "--batch-sizes: '' needs one or more integers >= 1"),
    (["bench", "--device", "cpu", "--threads", ""], "--threads: '' needs one or more integers >= 1"),
    (["sample", "{tmp}/s", "--width", "63"], "Invalid value for '--width'"),
    (["sample", "{tmp}/s", "--width", "66", "--height", "65"], "use even sides"),
    (["sample", "{tmp}/s", "--frames", "0"], "Invalid value for '--frames'"),
    (["show", "-n", "99999999999999999999"], "Invalid value for '--count' / '-n'"),
    (["build-engine", "-m", "segmentation={seg}", "--tasks", "segmentation", "--max-batch", "0"],
     "1 <= --min-batch <= --opt-batch <= --max-batch, got 1 <= 0 <= 0"),
    (["build-engine", "-m", "segmentation={seg}", "--tasks", "segmentation", "--onnx-only", "--out-dir",
      "/dev/null/x"], "--out-dir '/dev/null/x': cannot create it"),
])
def test_zero_empty_and_huge_flags_of_other_commands_are_usage_errors(assets: dict[str, Path], tmp_path: Path,
                                                                      args: list[str], expect: str) -> None:
    args = [a.format(tmp=tmp_path, seg=assets["segmentation"]) for a in args]
    p = cli(*args, timeout=60)
    assert p.returncode == 2, p.stderr
    assert expect in p.stderr and "unexpected" not in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "s").exists()


def test_a_video_as_config_and_a_5000_character_path_are_one_short_line(assets: dict[str, Path]) -> None:
    p = cli("run", str(assets["clip360"]))
    assert p.returncode == 2 and "not a text YAML file" in one_error_line(p.stderr)
    long = "/tmp/" + "x" * 5000 + ".mp4"
    p = cli("run", "-s", long, *model_args(assets), "--sink", "dir:/tmp/never", "--metrics-port", "-1")
    assert p.returncode in (1, 2)
    line = one_error_line(p.stderr)
    assert len(line) < 300 and "unexpected" not in line
    p = cli("run", long)
    assert p.returncode == 2 and len(one_error_line(p.stderr)) < 300


# -- item 16 ------------------------------------------------------------------------------------------------
def test_file_uris_are_percent_decoded(assets: dict[str, Path], tmp_path: Path) -> None:
    spaced = tmp_path / "with space.mp4"
    shutil.copy(assets["clip360"], spaced)
    p = cli("run", "-s", f"file://{tmp_path}/with%20space.mp4", *model_args(assets),
            "--sink", f"dir:{tmp_path / 'out'}", "--metrics-port", "-1")
    assert p.returncode == 0, p.stderr
    assert len((tmp_path / "out" / "with_space.jsonl").read_text().splitlines()) == 20


def test_unsupported_schemes_are_named_with_the_list(assets: dict[str, Path]) -> None:
    p = cli("run", "-s", "ftp://u:pw123@127.0.0.1/a.mp4", *model_args(assets), "--metrics-port", "-1")
    assert p.returncode == 2
    line = one_error_line(p.stderr)
    assert "unsupported scheme 'ftp://'" in line and "http://" in line and "rtmp://" in line
    assert "pw123" not in p.stderr


# -- hostile-input review: unparsable URIs and secrets in query strings ------------------------------------
@pytest.mark.parametrize("with_id", [True, False])
def test_an_unparsable_camera_uri_is_refused_in_one_line_with_the_password_hidden(
        assets: dict[str, Path], tmp_path: Path, with_id: bool) -> None:
    cfg = tmp_path / "live1.yaml"
    cfg.write_text("live: {max_attempts: 1, fail_if_down_at_start: true}\n")
    uri = "http://admin:TOPSECRET5@[::1:1/s"
    p = cli("run", str(cfg), "-s", f"cam={uri}" if with_id else uri, *model_args(assets),
            "--sink", f"dir:{tmp_path / 'out'}", "--metrics-port", "-1", timeout=120)
    assert p.returncode == 2, p.stderr
    line = one_error_line(p.stderr)
    assert "'http://***@[::1:1/s' is not a valid URL (an unbalanced '[' or ']' in the host)" in line
    assert "TOPSECRET5" not in p.stdout + p.stderr and len(p.stderr.strip().splitlines()) == 1


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


def test_ctrl_c_outside_a_run_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """typer turns a KeyboardInterrupt into a silent exit 130; the user gets the same line as elsewhere."""
    with cli_process("sample", str(tmp_path / "s"), "--frames", "3000", stdout=subprocess.PIPE) as proc:
        time.sleep(4)  # well inside the clip's generation (3000 frames take minutes)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert one_error_line(err) == "dptstream: error: interrupted", err
    assert "Traceback" not in err
