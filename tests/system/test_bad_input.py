"""Bad input gets one clear line naming the problem, a non-zero exit where it is fatal, and no traceback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import av
import numpy as np
import pytest

from tests.support.clips import corrupt_flagged_packets, ffmpeg_frame_count, joined_transport_streams
from tests.support.servers import RedisServer, cli, free_port, model_args, one_error_line

pytestmark = pytest.mark.slow


def audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        s = out.add_stream("mp2", rate=44100)
        s.layout = "stereo"
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 2 * 1152), dtype=np.int16), format="s16", layout="stereo")
            frame.sample_rate = 44100
            frame.pts = i * 1152
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    (d / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    (d / "empty.mp4").write_bytes(b"")
    return {"random": d / "random.mp4", "empty": d / "empty.mp4", "audio": audio_only(d / "audio.mkv"),
            "dir": d}


@pytest.mark.parametrize("kind, expect", [
    ("missing", "file not found"),
    ("random", "cannot read"),
    ("empty", "is empty"),
    ("audio", "has no video stream (it holds audio)"),
])
def test_bad_source_files(assets: dict[str, Path], bad_files: dict[str, Path], kind: str, expect: str) -> None:
    path = bad_files["dir"] / "nope.mp4" if kind == "missing" else bad_files[kind]
    p = cli("run", "-s", str(path), *model_args(assets), "--sink", "dir:/tmp/never", "--metrics-port", "-1")
    assert p.returncode != 0
    line = one_error_line(p.stderr)
    assert expect in line and path.name in line


def test_unknown_and_missing_models(assets: dict[str, Path], tmp_path: Path) -> None:
    p = cli("run", "-s", str(assets["clip360"]), "-m", f"segmentation={tmp_path / 'nothing'}",
            "--sink", "dir:/tmp/never", "--metrics-port", "-1")
    assert p.returncode != 0
    assert "does not exist" in one_error_line(p.stderr)
    not_dpt = tmp_path / "notdpt"
    not_dpt.mkdir()
    (not_dpt / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    p = cli("run", "-s", str(assets["clip360"]), "-m", f"segmentation={not_dpt}", "-m", f"depth={assets['depth']}",
            "--sink", "dir:/tmp/never", "--metrics-port", "-1")
    assert p.returncode != 0
    line = one_error_line(p.stderr)  # the model type found and what is supported
    assert "is a 'bert' checkpoint" in line and "segmentation supports model types dpt" in line
    p = cli("run", "-s", str(assets["clip360"]), "-m", "segmentation=no-such-org/no-such-dpt-model",
            "--sink", "dir:/tmp/never", "--metrics-port", "-1", env={"HF_HUB_OFFLINE": "1"})
    assert p.returncode != 0
    line = one_error_line(p.stderr)
    assert "no-such-org/no-such-dpt-model" in line and "--model" in line
    p = cli("run", "-s", str(assets["clip360"]), "-m", "colour=x", "--metrics-port", "-1")
    assert p.returncode == 2 and "TASK=ID|PATH" in one_error_line(p.stderr)


def test_invalid_stream_id_unknown_sink_unknown_key(assets: dict[str, Path], tmp_path: Path) -> None:
    p = cli("run", "-s", f"bad:id={assets['clip360']}", "--metrics-port", "-1")
    assert p.returncode == 2 and "invalid stream id 'bad:id'" in one_error_line(p.stderr)
    p = cli("run", "-s", f"{'x' * 65}={assets['clip360']}", "--metrics-port", "-1")
    assert p.returncode == 2 and "invalid stream id" in one_error_line(p.stderr)
    p = cli("run", "-s", str(assets["clip360"]), "--sink", "kafka://broker:9092", "--metrics-port", "-1")
    assert p.returncode == 2 and "unknown sink 'kafka://broker:9092'" in one_error_line(p.stderr)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sources: [a.mp4]\nengine:\n  batch_size: 2\n  batchsize: 4\n")
    p = cli("run", str(cfg))
    assert p.returncode == 2 and "unknown config key 'engine.batchsize'" in one_error_line(p.stderr)


def test_redis_unreachable_fails_fast_without_leaking_the_password(assets: dict[str, Path]) -> None:
    port = free_port()  # nothing listens there
    p = cli("run", "-s", str(assets["clip360"]), *model_args(assets), "--metrics-port", "-1",
            env={"REDIS_URL": f"redis://user:hunter2@127.0.0.1:{port}/0"})
    assert p.returncode == 1
    line = one_error_line(p.stderr)
    assert "cannot reach Redis" in line and str(port) in line
    assert "hunter2" not in p.stderr + p.stdout


def test_bad_stream_id_for_show(redis_server: RedisServer) -> None:
    p = cli("show", "../../etc", "--redis", redis_server.url)
    assert p.returncode == 2 and "invalid stream id" in one_error_line(p.stderr)


def test_truncated_file_publishes_every_decodable_frame(assets: dict[str, Path], tmp_path: Path,
                                                        redis_server: RedisServer) -> None:
    from pipeline.sample import make_clip

    full = make_clip(tmp_path / "full.mkv", frames=30, width=320, height=180, seed=4)
    data = full.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with av.open(str(cut)) as c:
        decodable = sum(1 for _ in c.decode(video=0))
    assert 5 < decodable < 30
    p = cli("run", "-s", str(cut), *model_args(assets), "--sink", redis_server.url, "--metrics-port", "-1")
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr and "truncated" in p.stderr
    r = redis_server.client()
    frames = [int(f[b"frame"]) for _, f in r.xrange("dpt:stream:cut:frames")]
    assert frames == list(range(decodable))


def test_two_joined_transport_streams_publish_every_frame_ffmpeg_decodes(assets: dict[str, Path], tmp_path: Path,
                                                                        redis_server: RedisServer) -> None:
    """``cat a.ts b.ts``: the junction packet carries FFmpeg's corrupt flag (a continuity-counter jump) but is
    whole; it is decoded like any other, so the published count is FFmpeg's decoded count and nothing is called
    skipped or truncated."""
    joined = joined_transport_streams(tmp_path / "ts")
    assert corrupt_flagged_packets(joined) >= 1
    decodable = ffmpeg_frame_count(joined)
    p = cli("run", "-s", f"cam={joined}", *model_args(assets), "--sink", redis_server.url, "--metrics-port", "-1")
    assert p.returncode == 0, p.stderr
    r = redis_server.client()
    frames = [int(f[b"frame"]) for _, f in r.xrange("dpt:stream:cam:frames")]
    assert frames == list(range(decodable))
    assert "Traceback" not in p.stderr and "truncated" not in p.stderr and "skipp" not in p.stderr


def test_one_bad_file_among_good_ones_still_publishes_the_good(assets: dict[str, Path], bad_files: dict[str, Path],
                                                               tmp_path: Path) -> None:
    # the bad file is found before any model loads: nothing runs, nothing is half-done
    p = cli("run", "-s", str(assets["clip360"]), "-s", str(bad_files["random"]), *model_args(assets),
            "--sink", f"dir:{tmp_path}", "--metrics-port", "-1")
    assert p.returncode == 1 and "random.mp4" in one_error_line(p.stderr)


@pytest.mark.parametrize("kind, expect", [
    ("chardev", "is not a regular file (a character device); pass a video file"),
    ("fifo", "is not a regular file (a pipe (FIFO)); pass a video file"),
    ("loop", "is a symlink loop; pass a video file"),
    ("dangling", "is a symlink to a missing file"),
])
def test_non_regular_files_are_named_for_what_they_are(assets: dict[str, Path], tmp_path: Path, kind: str,
                                                       expect: str) -> None:
    import os

    if kind == "chardev":
        path = Path("/dev/zero")
    elif kind == "fifo":
        path = tmp_path / "pipe.mp4"
        os.mkfifo(path)
    elif kind == "loop":
        path = tmp_path / "loop.mp4"
        (tmp_path / "other.mp4").symlink_to(path)
        path.symlink_to(tmp_path / "other.mp4")
    else:
        path = tmp_path / "dangling.mp4"
        path.symlink_to(tmp_path / "gone.mp4")
    run = [*model_args(assets), "--sink", "dir:/tmp/never", "--metrics-port", "-1"]
    p = cli("run", "-s", f"x={path}", *run)
    line = one_error_line(p.stderr)
    assert line == f"dptstream: error: source 'x': {path} {expect}"
    missing = cli("run", "-s", f"x={tmp_path / 'nope.mp4'}", *run)
    assert "file not found" in one_error_line(missing.stderr)
    assert p.returncode == missing.returncode != 0


# -- wrong-typed and corrupt Redis keys ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from pipeline.sample import make_checkpoint, make_clip

    d = tmp_path_factory.mktemp("small")
    return {"clip": make_clip(d / "clip.mp4", frames=12, width=320, height=180, seed=3),
            "segmentation": make_checkpoint(d / "seg", "segmentation", image_size=96),
            "depth": make_checkpoint(d / "depth", "depth", image_size=96)}


def test_a_wrong_typed_frames_key_of_one_camera_leaves_the_others_publishing(
        small: dict[str, Path], tmp_path: Path, redis_server: RedisServer) -> None:
    import signal
    import time
    import urllib.request

    from tests.support.servers import cli_process

    r = redis_server.client()
    r.set("dpt:stream:bad:frames", "x")
    port = free_port()
    cfg = tmp_path / "c.yaml"
    src = "loop: true, realtime: true, live: true"
    cfg.write_text(f"sources: [{{id: good, uri: '{small['clip']}', {src}}}, {{id: bad, uri: '{small['clip']}', "
                   f"{src}}}]\nsinks: ['{redis_server.url}']\nmetrics: {{port: {port}}}\n")
    with cli_process("run", str(cfg), *model_args(small), "--tasks", "segmentation") as proc:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and r.xlen("dpt:stream:good:frames") < 15:
            time.sleep(0.2)
        good = r.xlen("dpt:stream:good:frames")
        alive = proc.poll() is None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert alive and good >= 15, err
    assert "Traceback" not in err and "dptstream: error" not in err, err
    assert proc.returncode == 0, err
    warned = [line for line in err.splitlines() if "dpt:stream:bad:frames" in line]
    assert len(warned) == 1, err  # once per stream, not once per frame
    assert "not a stream" in warned[0] and "DEL the key or use another --redis-prefix" in warned[0], err
    assert r.get("dpt:stream:bad:frames") == b"x"  # never overwritten
    dropped = [line for line in metrics.splitlines()
               if line.startswith("dptstream_frames_dropped_total{") and 'reason="sink_error"' in line]
    assert dropped and 'stream="bad"' in dropped[0] and float(dropped[0].rsplit(" ", 1)[1]) >= 1, metrics
    assert not any('stream="good"' in line for line in dropped), metrics
    errors = [line for line in metrics.splitlines() if line.startswith("dptstream_sink_errors_total{")]
    assert errors and float(errors[0].rsplit(" ", 1)[1]) >= 1, metrics


@pytest.mark.parametrize(("key", "kind"), [("dpt:stream:f:frames", "stream"), ("dpt:stream:f:progress", "hash"),
                                           ("dpt:streams", "set"), ("dpt:meta", "hash")])
def test_a_wrong_typed_key_of_a_file_stream_is_fatal_naming_the_key(
        small: dict[str, Path], redis_server: RedisServer, key: str, kind: str) -> None:
    r = redis_server.client()
    r.set(key, "x")
    p = cli("run", "-s", f"f={small['clip']}", *model_args(small), "--tasks", "segmentation",
            "--sink", redis_server.url, "--metrics-port", "-1")
    assert p.returncode == 1, p.stderr
    line = one_error_line(p.stderr)
    assert f"{key} holds a string, not a {kind}" in line, line
    assert "DEL the key or use another --redis-prefix" in line, line
    # the run stops reading at the refusal: every frame decoded by then and not in Redis is counted
    found = re.search(r"f: (\d+) frames decoded", p.stderr)
    decoded = int(found.group(1)) if found else -1
    if key == "dpt:stream:f:frames":  # meta and the resume point are used before any frame
        assert 1 <= decoded <= 12, p.stderr
        assert f"{decoded} results not written" in line, line
    if key == "dpt:streams":  # each script writes its frame's entry and resume point before its SADD fails
        written = r.xlen("dpt:stream:f:frames")
        assert 1 <= written <= decoded <= 12, p.stderr
        assert r.hget("dpt:stream:f:progress", "frame") == str(written - 1).encode()
        assert f"{decoded - written} results not written" in line, line
    assert r.get(key) == b"x"


def test_a_corrupt_resume_point_names_the_key(small: dict[str, Path], redis_server: RedisServer) -> None:
    redis_server.client().hset("dpt:stream:f:progress", "frame", "notanumber")
    p = cli("run", "-s", f"f={small['clip']}", *model_args(small), "--tasks", "segmentation",
            "--sink", redis_server.url, "--metrics-port", "-1")
    assert p.returncode == 2, p.stderr
    line = one_error_line(p.stderr)
    assert "dpt:stream:f:progress" in line and "--no-resume" in line, line
    ok = cli("run", "-s", f"f={small['clip']}", *model_args(small), "--tasks", "segmentation",
             "--sink", redis_server.url, "--metrics-port", "-1", "--no-resume")
    assert ok.returncode == 0, ok.stderr


@pytest.fixture
def corrupt_streams(small: dict[str, Path], redis_server: RedisServer) -> RedisServer:
    """A real run's stream ``good``, and copies of its newest entry made unreadable: ``nopts`` (no pts),
    ``badpng`` (a mask that is not a PNG)."""
    p = cli("run", "-s", f"good={small['clip']}", *model_args(small), "--sink", redis_server.url,
            "--metrics-port", "-1")
    assert p.returncode == 0, p.stderr
    r = redis_server.client()
    _, newest = r.xrevrange("dpt:stream:good:frames", count=1)[0]
    r.xadd("dpt:stream:nopts:frames", {k: v for k, v in newest.items() if k != b"pts"})
    r.xadd("dpt:stream:badpng:frames", {**newest, b"mask": b"not a png"})
    r.sadd("dpt:streams", "nopts", "badpng")
    return redis_server


def test_show_prints_the_good_streams_and_one_line_per_unreadable_one(corrupt_streams: RedisServer) -> None:
    r = corrupt_streams.client()
    p = cli("show", "--redis", corrupt_streams.url)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert "good frame 11 pts" in p.stdout, p.stdout
    nopts = r.xrevrange("dpt:stream:nopts:frames", count=1)[0][0].decode()
    assert f"stream 'nopts': entry {nopts} is unreadable (missing pts)" in p.stdout + p.stderr, p.stdout + p.stderr
    r.hset("dpt:meta", "labels", "{not json")
    p = cli("show", "good", "--redis", corrupt_streams.url)
    assert p.returncode == 1, p.stderr
    assert "good frame 11 pts" in p.stdout, p.stdout  # classes by id
    assert "dpt:meta" in p.stdout + p.stderr and "labels" in p.stdout + p.stderr, p.stdout + p.stderr


@pytest.mark.parametrize(("sid", "field"), [("nopts", "missing pts"), ("badpng", "mask is not a PNG")])
def test_snapshot_of_an_unreadable_entry_names_the_stream_and_the_field(
        corrupt_streams: RedisServer, tmp_path: Path, sid: str, field: str) -> None:
    p = cli("snapshot", sid, "--redis", corrupt_streams.url, "-o", str(tmp_path / "x.png"))
    assert p.returncode == 1, p.stderr
    line = one_error_line(p.stderr)
    assert f"stream {sid!r}: entry " in line and f"is unreadable ({field})" in line, line
    ok = cli("snapshot", "good", "--redis", corrupt_streams.url, "-o", str(tmp_path / "good.png"))
    assert ok.returncode == 0, ok.stderr


def test_show_and_snapshot_of_a_frame_whose_depth_was_not_finite(corrupt_streams: RedisServer,
                                                                  tmp_path: Path) -> None:
    """The pipeline publishes non-finite depth statistics as null (never NaN): readers say so, never crash."""
    import json

    r = corrupt_streams.client()
    _, newest = r.xrevrange("dpt:stream:good:frames", count=1)[0]
    depth = json.loads(newest[b"depth"])
    nulls = {k: (None if isinstance(v, float | int) else v) for k, v in depth.items()}
    r.xadd("dpt:stream:nandepth:frames", {**newest, b"depth": json.dumps(nulls)})
    r.sadd("dpt:streams", "nandepth")
    p = cli("show", "nandepth", "--redis", corrupt_streams.url)
    assert p.returncode == 0 and "depth not finite on this frame" in p.stdout, p.stdout + p.stderr
    s = cli("snapshot", "nandepth", "--redis", corrupt_streams.url, "-o", str(tmp_path / "n.png"))
    assert s.returncode == 0 and (tmp_path / "n.png").stat().st_size > 0, s.stderr


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


@pytest.mark.parametrize("args, expect", [
    (["bench", "--device", "cpu", "--batch-sizes", ""], "--batch-sizes: '' needs one or more integers from 1"),
    (["bench", "--device", "cpu", "--threads", ""], "--threads: '' needs one or more integers from 1"),
    (["bench", "--device", "cpu", "--threads", "2,99999"], "--threads: '2,99999' needs one or more integers from "
                                                           "1 to 1024"),
    (["bench", "--device", "cpu", "--batch-sizes", "100000"], "--batch-sizes: '100000' needs one or more integers "
                                                              "from 1 to 256"),
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


def test_unsupported_schemes_are_named_with_the_list(assets: dict[str, Path]) -> None:
    p = cli("run", "-s", "ftp://u:pw123@127.0.0.1/a.mp4", *model_args(assets), "--metrics-port", "-1")
    assert p.returncode == 2
    line = one_error_line(p.stderr)
    assert "unsupported scheme 'ftp://'" in line and "http://" in line and "rtmp://" in line
    assert "pw123" not in p.stderr


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
