"""Batch jobs: submit / worker / status on a real redis-server, real H.264 clips and the tiny checkpoints.

Exactly once is checked on the Redis stream itself: the frame indexes of a job's stream must be 0..N-1,
each once, where N is what PyAV decodes from the file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import av
import pytest

from tests.support.clips import corrupt_flagged_packets, ffmpeg_frame_count, joined_transport_streams
from tests.support.servers import ROOT, RedisServer, cli, model_args

PREFIX = "dpt"


# -- helpers ---------------------------------------------------------------------------------------------

def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def stream_frames(r: Any, sid: str, prefix: str = PREFIX) -> list[int]:
    return [int(f[b"frame"]) for _id, f in r.xrange(f"{prefix}:stream:{sid}:frames")]


def assert_exactly_once(r: Any, sid: str, clip: Path) -> None:
    n = decoded_frames(clip)
    got = stream_frames(r, sid)
    assert got == list(range(n)), f"{sid}: expected frames 0..{n - 1} once each, got {got}"


def job(r: Any, jid: str, prefix: str = PREFIX) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in r.hgetall(f"{prefix}:job:{jid}").items()}


def worker_config(path: Path, poll_s: float = 0.3) -> Path:
    path.write_text(f"engine:\n  threads: 1\n  batch_size: 4\njobs:\n  poll_s: {poll_s}\n")
    return path


def start_worker(assets: dict[str, Path], redis: RedisServer, config: Path, name: str, log: Path,
                 *extra: str) -> subprocess.Popen[bytes]:
    """``dptstream worker`` as a user starts it (a subprocess), logging to ``log``."""
    args = [sys.executable, "-m", "pipeline.cli", "worker", str(config), "--sink", redis.url,
            *model_args(assets), "--device", "cpu", "--metrics-port", "-1", "--name", name, *extra]
    f = open(log, "wb")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, cwd=str(ROOT),
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for(cond: Any, timeout: float, what: str, procs: list[subprocess.Popen[bytes]] | None = None,
             logs: list[Path] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        for p, lg in zip(procs or [], logs or [], strict=False):
            if p.poll() is not None and p.returncode != 0:
                pytest.fail(f"worker exited {p.returncode} while waiting for {what}:\n{lg.read_text()[-3000:]}")
        time.sleep(0.1)
    tails = "\n".join(lg.read_text()[-2000:] for lg in logs or [])
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Six short real-content clips (each a different photograph), one longer clip, one corrupt file."""
    from pipeline.sample import make_clip

    d = tmp_path_factory.mktemp("clips")
    out = {f"clip{i}": make_clip(d / f"clip{i}.mp4", frames=14 + i, width=320, height=180, seed=i)
           for i in range(6)}
    out["long"] = make_clip(d / "long.mp4", frames=72, width=320, height=180, seed=3)
    bad = d / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))  # an MP4 header, then noise
    out["bad"] = bad
    return out


# -- submit: ids, validation ----------------------------------------------------------------------------

def test_job_ids_from_files_globs_and_uris(clips: dict[str, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.config import ConfigError
    from pipeline.jobs.submit import expand_inputs, job_id_for

    d = clips["clip0"].parent
    jobs = expand_inputs([str(d / "clip*.mp4"), f"file://{clips['long']}", f"mine={clips['bad']}"])
    assert [j.id for j in jobs] == [f"clip{i}" for i in range(6)] + ["long", "mine"]
    assert all(os.path.isabs(j.uri) for j in jobs)
    assert expand_inputs([str(clips["clip0"]), str(clips["clip0"])])[0].id == "clip0"  # one file, one job

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for sub in ("a", "b"):
        (tmp_path / sub / "cam 1.mp4").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"two files get the job id 'cam_1'.*ID=PATH"):
        expand_inputs([str(tmp_path / "*" / "*.mp4")])
    monkeypatch.chdir(tmp_path)
    assert [j.id for j in expand_inputs(["*/*.mp4"], id_from="path")] == ["a_cam_1", "b_cam_1"]
    long_name = "x" * 80 + ".mp4"
    jid = job_id_for(long_name)
    assert len(jid) <= 64 and jid != job_id_for("y" + long_name)

    for args, msg in [
        ([str(tmp_path / "nope.mp4")], "file not found"),
        ([str(tmp_path / "a")], "is a directory"),
        ([str(tmp_path / "none-*.mp4")], "no file matches"),
        (["rtsp://cam/stream"], "live stream"),
        (["http://host/v.mp4"], "unsupported job URI"),
        (["bad/id=x.mp4"], "file not found"),
        ([f"a b={clips['clip0']}"], "invalid job id"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            expand_inputs(args)
    assert expand_inputs([str(tmp_path / "nope.mp4")], check=False)[0].id == "nope"


def test_submit_queues_once_and_refuses_a_second_file_under_one_id(redis_server: RedisServer,
                                                                  clips: dict[str, Path], tmp_path: Path) -> None:
    d = clips["clip0"].parent
    r = cli("submit", str(d / "clip[0-2].mp4"), "--redis", redis_server.url)
    assert r.returncode == 0, r.stderr
    assert "queued 3 job(s)" in r.stdout and "clip0, clip1, clip2" in r.stdout
    again = cli("submit", str(clips["clip1"]), str(clips["clip3"]), "--redis", redis_server.url)
    assert again.returncode == 0, again.stderr
    assert "queued 1 job(s)" in again.stdout and "skipped 1 job(s) already queued: clip1" in again.stdout
    other = tmp_path / "clip1.mp4"
    other.write_bytes(b"not the same file")
    clash = cli("submit", str(other), str(clips["clip4"]), "--redis", redis_server.url)
    assert clash.returncode == 2
    assert clash.stderr.strip().splitlines() == [
        f"dptstream: error: job id 'clip1' already belongs to {clips['clip1']} (not {other}): "
        "give an explicit ID=PATH, or use --id-from path"]
    rd = redis_server.client()
    assert rd.xlen(f"{PREFIX}:jobs") == 4  # nothing of the refused call was queued
    assert rd.xinfo_groups(f"{PREFIX}:jobs")[0]["name"] == b"dptstream-workers"

    st = cli("status", "--redis", redis_server.url, "--json")
    assert st.returncode == 0, st.stderr
    doc = json.loads(st.stdout)
    assert doc["counts"] == {"queued": 4, "running": 0, "done": 0, "failed": 0}
    assert [j["id"] for j in doc["jobs"]] == ["clip0", "clip1", "clip2", "clip3"]

    down = cli("submit", str(clips["clip0"]), "--redis", "redis://127.0.0.1:1/0")
    assert down.returncode == 1 and "cannot reach Redis at redis://127.0.0.1:1/0" in down.stderr  # runtime, not usage
    assert "Traceback" not in down.stderr
    missing = cli("submit", str(tmp_path / "missing.mp4"), "--redis", redis_server.url)
    assert missing.returncode == 2 and "file not found" in missing.stderr


# -- one worker in this process (real engines, real Redis) -----------------------------------------------

def _runtime(assets: dict[str, Path], redis: RedisServer, backend: str = "auto", **jobs: Any) -> Any:
    from pipeline.configfile import load_config
    from pipeline.runtime.app import start_runtime

    cfg = load_config(None, {
        "sinks": [redis.url], "models": {"segmentation": str(assets["segmentation"]),
                                         "depth": str(assets["depth"])},
        "engine": {"device": "cpu", "batch_size": 4, "backend": backend}, "metrics": {"port": None},
        "progress": False, "jobs": {"poll_s": 0.2, **jobs},
    })
    return cfg, start_runtime(cfg, serve_metrics=False)


def _submit(redis: RedisServer, *paths: str, prefix: str = PREFIX) -> None:
    from pipeline.jobs.keys import JobKeys
    from pipeline.jobs.submit import expand_inputs, submit

    submit(redis.client(), JobKeys(prefix), "dptstream-workers", expand_inputs(paths, check=False))


def test_bad_files_fail_with_reason_and_never_block_the_others(assets: dict[str, Path], clips: dict[str, Path],
                                                               redis_server: RedisServer, tmp_path: Path) -> None:
    from pipeline.jobs.keys import JobKeys
    from pipeline.jobs.status import job_status
    from pipeline.jobs.worker import Worker

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    _submit(redis_server, str(clips["bad"]), str(clips["clip0"]), str(tmp_path / "gone.mp4"), str(empty),
            str(clips["clip1"]))
    cfg, rt = _runtime(assets, redis_server)
    try:
        out = Worker(cfg, rt, redis_server.client(), name="w1", until_empty=True).run()
    finally:
        rt.close()
    r = redis_server.client()
    assert {o.job: o.state for o in out} == {"bad": "failed", "clip0": "done", "gone": "failed",
                                               "empty": "failed", "clip1": "done"}
    for sid in ("clip0", "clip1"):
        assert_exactly_once(r, sid, clips[sid])
    assert "cannot read" in job(r, "bad")["error"] and str(clips["bad"]) in job(r, "bad")["error"]
    assert "file not found" in job(r, "gone")["error"]
    assert "empty (0 bytes)" in job(r, "empty")["error"]
    assert r.xlen(f"{PREFIX}:jobs") == 0  # every job acknowledged and removed: none blocks the queue
    assert r.xpending(f"{PREFIX}:jobs", "dptstream-workers")["pending"] == 0
    infos = {i.id: i for i in job_status(r, JobKeys(PREFIX))}
    assert infos["clip0"].state == "done" and infos["clip0"].published == decoded_frames(clips["clip0"])
    assert infos["clip0"].frames == decoded_frames(clips["clip0"])
    assert rt.metrics.jobs.labels(state="failed")._value.get() == 3
    # a failed job can be submitted again (e.g. after fixing the file)
    _submit(redis_server, str(clips["bad"]))
    assert job(r, "bad")["state"] == "queued" and "error" not in job(r, "bad")


def test_done_never_hides_a_skipped_packet(assets: dict[str, Path], redis_server: RedisServer,
                                           tmp_path: Path) -> None:
    """Two TS files joined with cat: done with FFmpeg's frame count and nothing skipped. A file cut inside its
    last packet: done, and the job says it skipped that packet (``note`` and ``skipped_packets``)."""
    from pipeline.jobs.worker import Worker
    from pipeline.sample import make_clip

    joined = joined_transport_streams(tmp_path / "ts")
    data = make_clip(tmp_path / "full.mp4", frames=24, width=320, height=180, seed=3).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    assert corrupt_flagged_packets(cut) == 1
    _submit(redis_server, str(joined), str(cut))
    cfg, rt = _runtime(assets, redis_server)
    try:
        out = Worker(cfg, rt, redis_server.client(), name="w1", until_empty=True).run()
    finally:
        rt.close()
    r = redis_server.client()
    assert {o.job: o.state for o in out} == {"joined": "done", "cut": "done"}
    assert stream_frames(r, "joined") == list(range(ffmpeg_frame_count(joined)))
    assert job(r, "joined")["skipped_packets"] == "0" and "note" not in job(r, "joined")
    assert job(r, "cut")["skipped_packets"] == "1"
    assert "skipped 1 packet(s) that could not be decoded" in job(r, "cut")["note"]
    assert stream_frames(r, "cut") == list(range(int(job(r, "cut")["published"])))


def test_a_file_too_large_for_the_network_fails_alone(redis_server: RedisServer, tmp_path: Path) -> None:
    """A checkpoint whose processor does not resize (facebook/dpt-dinov2-*) runs at each file's size: a 4K file
    whose network input the machine cannot hold fails with the line that says so; the small file is done."""
    from pipeline.checkpoints import make_family_checkpoint
    from pipeline.configfile import load_config
    from pipeline.jobs.worker import Worker
    from pipeline.runtime.app import start_runtime
    from pipeline.sample import make_clip

    ckpt = make_family_checkpoint(tmp_path / "dinov2", "dpt-dinov2")
    proc = json.loads((ckpt / "preprocessor_config.json").read_text())
    (ckpt / "preprocessor_config.json").write_text(json.dumps({**proc, "do_resize": False, "do_pad": True,
                                                               "size_divisor": 14}))
    uhd = make_clip(tmp_path / "uhd.mp4", frames=2, width=3840, height=2160, seed=1)
    small = make_clip(tmp_path / "small.mp4", frames=3, width=320, height=180, seed=2)
    _submit(redis_server, str(uhd), str(small))
    cfg = load_config(None, {"sinks": [redis_server.url], "tasks": ["depth"], "models": {"depth": str(ckpt)},
                             "engine": {"device": "cpu", "batch_size": 256}, "metrics": {"port": None},
                             "progress": False, "jobs": {"poll_s": 0.2}})
    rt = start_runtime(cfg, serve_metrics=False)
    try:
        out = Worker(cfg, rt, redis_server.client(), name="w1", until_empty=True).run()
    finally:
        rt.close()
    r = redis_server.client()
    assert {o.job: o.state for o in out} == {"uhd": "failed", "small": "done"}
    assert "3850x2170" in job(r, "uhd")["error"] and "--max-side" in job(r, "uhd")["error"]
    assert stream_frames(r, "small") == [0, 1, 2] and stream_frames(r, "uhd") == []


def test_stopped_worker_hands_the_job_back_and_the_next_resumes_exactly_once(
        assets: dict[str, Path], clips: dict[str, Path], redis_server: RedisServer) -> None:
    """SIGTERM path (in-process): the frames in flight are published, the job goes back to the queue at once
    (no claim_idle wait), and the next worker continues after the last published frame."""
    from pipeline.jobs.worker import Worker

    _submit(redis_server, str(clips["long"]))
    r = redis_server.client()
    cfg, rt = _runtime(assets, redis_server, claim_idle_s=300)
    try:
        w1 = Worker(cfg, rt, redis_server.client(), name="w1", until_empty=True)

        def stop_midway() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                v = r.hget(f"{PREFIX}:stream:long:progress", "frame")
                if v is not None and int(v) >= 8:
                    w1.request_stop()
                    return
                time.sleep(0.02)

        t = threading.Thread(target=stop_midway)
        t.start()
        out1 = w1.run()
        t.join()
        assert [o.state for o in out1] == ["released"]
        first = out1[0].frames
        assert 8 <= first < decoded_frames(clips["long"])
        assert job(r, "long")["state"] == "queued"
        w2 = Worker(cfg, rt, redis_server.client(), name="w2", until_empty=True)
        t0 = time.monotonic()
        out2 = w2.run()
        assert time.monotonic() - t0 < 60  # taken at once, not after claim_idle_s = 300
    finally:
        rt.close()
    assert [o.state for o in out2] == ["done"]
    assert out2[0].new == decoded_frames(clips["long"]) - first  # resumed after the last published frame
    assert_exactly_once(r, "long", clips["long"])
    assert job(r, "long")["attempts"] == "2"


def test_heartbeat_keeps_a_long_job_from_being_taken_over(assets: dict[str, Path], clips: dict[str, Path],
                                                          redis_server: RedisServer) -> None:
    """claim_idle_s is far shorter than the job: a live worker's heartbeat must keep others off it."""
    from pipeline.jobs.worker import Worker

    _submit(redis_server, str(clips["long"]))
    r = redis_server.client()
    # torch, the slower CPU engine: the job has to outlast claim_idle_s for the heartbeat to be what keeps it
    cfg, rt = _runtime(assets, redis_server, backend="torch", claim_idle_s=1.0)
    stolen: list[Any] = []
    try:
        w = Worker(cfg, rt, redis_server.client(), name="w1", until_empty=True)
        done = threading.Event()

        def thief() -> None:  # what another worker's XAUTOCLAIM would get
            while not done.is_set():
                _next, claimed, *_ = r.xautoclaim(f"{PREFIX}:jobs", "dptstream-workers", "thief", 1000, count=10)
                stolen.extend(claimed)
                time.sleep(0.1)

        t = threading.Thread(target=thief)
        t.start()
        t0 = time.monotonic()
        out = w.run()
        done.set()
        t.join()
    finally:
        rt.close()
    assert time.monotonic() - t0 > 2.0, "the job should outlast claim_idle_s for this test to mean anything"
    assert stolen == []
    assert [o.state for o in out] == ["done"]
    assert_exactly_once(r, "long", clips["long"])


def test_a_job_delivered_too_often_is_marked_failed(assets: dict[str, Path], clips: dict[str, Path],
                                                    redis_server: RedisServer) -> None:
    from pipeline.jobs.worker import Worker

    _submit(redis_server, str(clips["clip2"]))
    r = redis_server.client()
    r.hset(f"{PREFIX}:job:clip2", mapping={"attempts": 3, "error": "worker ran out of memory"})
    cfg, rt = _runtime(assets, redis_server, max_attempts=3)
    try:
        out = Worker(cfg, rt, redis_server.client(), name="w1", until_empty=True).run()
    finally:
        rt.close()
    assert [(o.job, o.state) for o in out] == [("clip2", "failed")]
    assert job(r, "clip2")["error"] == "gave up after 3 attempts (last: worker ran out of memory)"
    assert stream_frames(r, "clip2") == []
    assert r.xlen(f"{PREFIX}:jobs") == 0


# -- several worker processes ----------------------------------------------------------------------------

@pytest.mark.slow
def test_three_workers_six_clips_every_frame_exactly_once(assets: dict[str, Path], clips: dict[str, Path],
                                                          redis_server: RedisServer, tmp_path: Path) -> None:
    config = worker_config(tmp_path / "worker.yaml")
    logs = [tmp_path / f"w{i}.log" for i in range(3)]
    procs = [start_worker(assets, redis_server, config, f"w{i}", logs[i]) for i in range(3)]
    r = redis_server.client()
    try:
        def consumers() -> int:
            try:
                return len(r.xinfo_consumers(f"{PREFIX}:jobs", "dptstream-workers"))
            except Exception:
                return 0

        wait_for(lambda: consumers() == 3, 120, "3 workers waiting on the queue", procs, logs)
        d = clips["clip0"].parent
        sub = cli("submit", str(d / "clip*.mp4"), str(clips["bad"]), "--redis", redis_server.url)
        assert sub.returncode == 0, sub.stderr
        assert "queued 7 job(s)" in sub.stdout

        def finished() -> bool:
            states = [job(r, j).get("state") for j in [*(f"clip{i}" for i in range(6)), "bad"]]
            return all(s in ("done", "failed") for s in states)

        wait_for(finished, 180, "all jobs finished", procs, logs)
        st = cli("status", "--redis", redis_server.url)
        assert "; 3 worker(s) active" in st.stdout.splitlines()[0]
        for p in procs:  # idle workers stop on SIGTERM, exit 0
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(30) for p in procs]
    finally:
        stop(procs)
    text = [lg.read_text() for lg in logs]
    assert codes == [0, 0, 0], "\n".join(text)
    for i in range(6):
        assert_exactly_once(r, f"clip{i}", clips[f"clip{i}"])
        assert job(r, f"clip{i}")["state"] == "done"
    workers = {job(r, f"clip{i}")["worker"] for i in range(6)}
    assert workers == {"w0", "w1", "w2"}, f"every worker should have taken jobs, got {workers}"
    bad = job(r, "bad")
    assert bad["state"] == "failed" and "cannot read" in bad["error"]
    assert not any("Traceback" in t for t in text), "\n".join(text)

    # status: counts, per-job progress, the failure reason
    assert st.returncode == 0, st.stderr
    lines = st.stdout.splitlines()
    assert lines[0].startswith(f"{PREFIX}:jobs at {redis_server.url}: 7 job(s): 0 queued, 0 running, 6 done, "
                               "1 failed")
    assert lines[1].split() == ["JOB", "STATE", "FRAMES", "DONE", "FPS", "ETA", "WORKER", "DETAIL"]
    assert lines[2].split()[:2] == ["bad", "failed"] and "cannot read" in lines[2]  # failures listed first
    rows = {ln.split()[0]: ln.split() for ln in lines[3:]}
    for i in range(6):
        n = decoded_frames(clips[f"clip{i}"])
        assert rows[f"clip{i}"][1:4] == ["done", f"{n}/{n}", "100%"]


@pytest.mark.slow
def test_worker_killed_mid_job_another_worker_finishes_it_exactly_once(
        assets: dict[str, Path], clips: dict[str, Path], redis_server: RedisServer, tmp_path: Path) -> None:
    config = worker_config(tmp_path / "worker.yaml")
    r = redis_server.client()
    sub = cli("submit", str(clips["long"]), "--redis", redis_server.url)
    assert sub.returncode == 0, sub.stderr
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = start_worker(assets, redis_server, config, "victim", log_a, "--claim-idle", "2")
    procs = [a]
    try:
        def published() -> int:
            v = r.hget(f"{PREFIX}:stream:long:progress", "frame")
            return int(v) + 1 if v is not None else 0

        wait_for(lambda: published() >= 10, 120, "the first worker to publish 10 frames", [a], [log_a])
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        at_kill = published()
        n = decoded_frames(clips["long"])
        assert at_kill < n, "the job finished before the kill; make the clip longer"
        st = cli("status", "long", "--redis", redis_server.url, "--json")
        running = json.loads(st.stdout)["jobs"][0]
        assert running["state"] == "running" and running["worker"] == "victim"

        b = start_worker(assets, redis_server, config, "rescuer", log_b, "--claim-idle", "2", "--until-empty")
        procs.append(b)
        assert b.wait(180) == 0, log_b.read_text()
    finally:
        stop(procs)
    text = log_b.read_text()
    assert "took over job long" in text and f"job long: resuming after frame {at_kill - 1}" in text
    assert_exactly_once(r, "long", clips["long"])
    info = job(r, "long")
    assert info["state"] == "done" and info["worker"] == "rescuer" and info["attempts"] == "2"
    assert r.xlen(f"{PREFIX}:jobs") == 0
    st = cli("status", "--redis", redis_server.url)
    assert "1 job(s): 0 queued, 0 running, 1 done, 0 failed" in st.stdout.splitlines()[0]


@pytest.mark.slow
def test_rolling_restarts_hand_the_job_back_without_using_up_its_attempts(
        assets: dict[str, Path], redis_server: RedisServer, tmp_path: Path) -> None:
    """A scale-down or rolling update stops each worker with one SIGTERM mid-job: more graceful hand-backs than
    jobs.max_attempts, and the next worker still resumes the job and finishes it, every frame exactly once."""
    from pipeline.sample import make_clip

    clip = make_clip(tmp_path / "clips" / "long.mp4", frames=200, width=320, height=180, seed=4)
    n = decoded_frames(clip)
    config = worker_config(tmp_path / "worker.yaml")
    r = redis_server.client()
    sub = cli("submit", str(clip), "--redis", redis_server.url)
    assert sub.returncode == 0, sub.stderr

    def published() -> int:
        v = r.hget(f"{PREFIX}:stream:long:progress", "frame")
        return int(v) + 1 if v is not None else 0

    mark = 0
    for i in range(2):  # two hand-backs, with --max-attempts 2
        log = tmp_path / f"w{i}.log"
        w = start_worker(assets, redis_server, config, f"w{i}", log, "--max-attempts", "2")
        try:
            wait_for(lambda t=mark + 8: published() >= t, 120, f"worker w{i} to publish 8 frames", [w], [log])
            w.send_signal(signal.SIGTERM)
            assert w.wait(60) == 0, log.read_text()
        finally:
            stop([w])
        assert published() > mark and published() < n, "the job should be stopped mid-file"
        mark = published()
        assert "handed back to the queue" in log.read_text()
        assert job(r, "long")["state"] == "queued"
    log = tmp_path / "last.log"
    last = start_worker(assets, redis_server, config, "last", log, "--max-attempts", "2", "--until-empty")
    try:
        assert last.wait(180) == 0, log.read_text()
    finally:
        stop([last])
    text = log.read_text()
    info = job(r, "long")
    assert info["state"] == "done", text
    assert_exactly_once(r, "long", clip)
    assert "took job long (handed back by worker w1)" in text
    assert "silent" not in text  # the job was handed back, not taken from a silent worker


def test_an_idle_worker_outlives_a_redis_restart(assets: dict[str, Path], clips: dict[str, Path],
                                                 redis_server: RedisServer) -> None:
    """Redis goes away and comes back empty (no persistence): the waiting worker neither exits nor crashes,
    re-creates its group and takes the next job."""
    from pipeline.jobs.worker import Worker

    cfg, rt = _runtime(assets, redis_server)
    try:
        w = Worker(cfg, rt, redis_server.client(), name="w1")
        t = threading.Thread(target=w.run)
        t.start()
        r = redis_server.client()
        wait_for(lambda: r.zcard(f"{PREFIX}:workers") == 1, 30, "the worker to check in")
        redis_server.stop()
        time.sleep(1.5)
        assert t.is_alive()
        redis_server.start()
        _submit(redis_server, str(clips["clip3"]))
        wait_for(lambda: job(r, "clip3").get("state") == "done", 60, "the job after the restart")
        w.request_stop()
        t.join(30)
        assert not t.is_alive()
    finally:
        rt.close()
    assert [(o.job, o.state) for o in w.outcomes] == [("clip3", "done")]
    assert_exactly_once(r, "clip3", clips["clip3"])
