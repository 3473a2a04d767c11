"""Batch-job scaling: files per hour and frames/s with 1, 2 and 4 ``dptstream worker`` processes.

Every run processes the same generated clips (real photographs, panned and zoomed, H.264) with the tiny
random-weight checkpoints on the CPU, against a private redis-server. Workers are started first and the clips
are submitted once all of them wait on the queue and each has run one short warm-up job, so model loading and
the first slow inferences are not counted; the figures come from the job records themselves (first job start ->
last job finish). Each worker gets ``cores // workers`` torch
threads (at least 1), so the runs share the same CPU budget; on a machine with fewer cores than workers the
extra workers can only add overhead, and the JSON says so.

    .venv/bin/python bench/scaling.py                      # -> bench/results/scaling-cpu.json
    .venv/bin/python bench/scaling.py --workers 1,2 --clips 4 --frames 24 --out /tmp/s.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("bench/scaling.py: redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("bench/scaling.py: redis-server did not start")


def submit_and_wait(r: Any, url: str, prefix: str, clips: list[Path]) -> list[dict[str, str]]:
    sub = subprocess.run([sys.executable, "-m", "pipeline.cli", "submit", *map(str, clips), "--redis", url,
                          "--redis-prefix", prefix], capture_output=True, text=True, cwd=str(ROOT))
    if sub.returncode != 0:
        sys.exit(f"submit failed: {sub.stderr}")
    ids = [c.stem for c in clips]
    while True:
        states = [r.hget(f"{prefix}:job:{j}", "state") for j in ids]
        if all(s in (b"done", b"failed") for s in states):
            break
        time.sleep(0.1)
    return [{k.decode(): v.decode() for k, v in r.hgetall(f"{prefix}:job:{j}").items()} for j in ids]


def run_once(n: int, clips: list[Path], warmups: list[Path], models: dict[str, str], url: str, work: Path,
             cores: int, batch: int, fixed_threads: int | None = None) -> dict[str, Any]:
    prefix = f"scale{n}"
    threads = fixed_threads or max(1, cores // n)
    cfg = work / f"worker-{n}.yaml"
    cfg.write_text(f"engine:\n  threads: {threads}\n  batch_size: {batch}\njobs:\n  poll_s: 0.2\n"
                   f"redis:\n  prefix: {prefix}\n  maxlen: 100000\n")
    r = redis.Redis.from_url(url)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
    logs = [work / f"w{n}-{i}.log" for i in range(n)]
    t_launch = time.monotonic()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "worker", str(cfg), "--sink", url,
         "-m", f"segmentation={models['segmentation']}", "-m", f"depth={models['depth']}",
         "--device", "cpu", "--metrics-port", "-1", "--name", f"w{i}", "--no-progress"],
        stdout=open(logs[i], "wb"), stderr=subprocess.STDOUT, cwd=str(ROOT), env=env)  # noqa: SIM115
        for i in range(n)]
    try:
        while r.zcard(f"{prefix}:workers") < n:
            for p, lg in zip(procs, logs, strict=True):
                if p.poll() is not None:
                    sys.exit(f"worker exited {p.returncode}:\n{lg.read_text()[-2000:]}")
            time.sleep(0.1)
        ready_s = time.monotonic() - t_launch
        # one short warm-up job per worker (first inferences on the CPU are slow), not timed
        warm = submit_and_wait(r, url, prefix, warmups[:n])
        warmed = sorted({j["worker"] for j in warm})
        t0 = time.monotonic()
        jobs = submit_and_wait(r, url, prefix, clips)
        wall = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    failed = [j["id"] for j in jobs if j["state"] != "done"]
    if failed:
        sys.exit(f"jobs failed: {failed}")
    start = min(float(j["started"]) for j in jobs)
    end = max(float(j["finished"]) for j in jobs)
    window = end - start
    frames = sum(int(j["published"]) for j in jobs)
    per_worker: dict[str, int] = {}
    for j in jobs:
        per_worker[j["worker"]] = per_worker.get(j["worker"], 0) + 1
    return {
        "mode": "jobs", "workers": n, "threads_per_worker": threads, "files": len(jobs), "frames": frames,
        "seconds": round(window, 3), "wall_s_from_submit": round(wall, 3),
        "fps": round(frames / window, 3), "files_per_hour": round(len(jobs) / window * 3600, 1),
        "job_fps_median": sorted(float(j["fps"]) for j in jobs)[len(jobs) // 2],
        "jobs_per_worker": dict(sorted(per_worker.items())), "worker_startup_s": round(ready_s, 2),
        "warmed_workers": len(warmed),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="1,2,4", help="worker counts to run, e.g. 1,2,4")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per worker (default cores // workers)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scaling-cpu.json")
    args = ap.parse_args()
    counts = [int(x) for x in args.workers.split(",") if x.strip()]
    width, height = (int(v) for v in args.size.split("x"))

    from pipeline.benchmark.results import machine_info, versions
    from pipeline.sample import make_checkpoint, make_clip

    machine = machine_info()
    cores = int(machine["cores"] or 1)
    with tempfile.TemporaryDirectory(prefix="dpt-scaling-") as tmp:
        work = Path(tmp)
        print(f"making {args.clips} clips of {args.frames} frames at {width}x{height} ...", flush=True)
        clips = [make_clip(work / f"clip{i:02d}.mp4", frames=args.frames, width=width, height=height, seed=i)
                 for i in range(args.clips)]
        warmups = [make_clip(work / f"warmup{i}.mp4", frames=8, width=width, height=height, seed=100 + i)
                   for i in range(max(counts))]
        models = {t: str(make_checkpoint(work / t, t)) for t in ("segmentation", "depth")}
        rproc, url = start_redis(work)
        results = []
        try:
            for n in counts:
                print(f"{n} worker(s) ...", flush=True)
                load0 = os.getloadavg()[0]
                res = run_once(n, clips, warmups, models, url, work, cores, args.batch, args.threads)
                # other work on the machine skews the figures: say how busy it was
                res["load_avg_1m"] = {"before": round(load0, 2), "after": round(os.getloadavg()[0], 2)}
                results.append(res)
                print(f"  {res['files']} files, {res['frames']} frames in {res['seconds']:.1f}s: "
                      f"{res['fps']:.1f} frames/s, {res['files_per_hour']:.0f} files/h", flush=True)
        finally:
            rproc.terminate()
            rproc.wait(10)
    base = next((r for r in results if r["workers"] == 1), None)
    for r in results:
        r["scaling_vs_1_worker"] = round(r["fps"] / base["fps"], 3) if base else None
        r["efficiency"] = round(r["scaling_vs_1_worker"] / r["workers"], 3) if base else None
    loads = [r["load_avg_1m"]["before"] for r in results] + [r["load_avg_1m"]["after"] for r in results]
    note = (f"CPU only, {cores} cores. Every worker count shares the same {cores} cores (threads per worker = "
            "cores // workers, at least 1), so more workers than cores cannot add compute: the ratios show the "
            "queue's overhead and how well separate processes overlap decode, inference and Redis on this "
            "machine, not GPU scaling (one worker per GPU is the deployment unit). Tiny random-weight DPT "
            "checkpoints (192x192 input), not DPT-Large. "
            f"The machine was shared with other work during the run (1-minute load average {min(loads):.1f} to "
            f"{max(loads):.1f} on {cores} cores, see load_avg_1m per result), so treat the figures as indicative.")
    doc = {
        "command": "python bench/scaling.py " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine,
        "versions": versions(),
        "setup": {"clips": args.clips, "frames_per_clip": args.frames, "source": [width, height],
                  "models": "tiny random-weight DPT (pipeline.sample.make_checkpoint), segmentation + depth",
                  "backend": "torch-cpu-fp32", "batch": args.batch, "sink": "redis (local redis-server)"},
        "note": note,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
