"""Camera fleet benchmark: handover times, add-to-first-entry latency, and ``node`` vs ``run`` throughput.

Everything runs as a user runs it: a private redis-server, a local gst-rtsp-server whose mounts are the cameras
(real-content H.264 in a loop), and ``dptstream node`` / ``dptstream run`` subprocesses with the small
random-weight checkpoints on the CPU. Times are read from Redis (its clock and the entries' ids), not from the
processes' logs:

* handover after SIGKILL / SIGTERM: from the signal to the first entry another node writes, per camera moved
  (two nodes, four cameras; the victim is started again and the fleet rebalanced between rounds);
* add to first entry: from the registry write (``cameras add``) to the camera's first entry, and the other
  cameras' longest gap between two entries around the add (against a quiet window before it);
* published frames/s of 8 cameras over the same window, ``dptstream node`` (cameras from the registry) against
  ``dptstream run --source ...`` (the same cameras on the command line).

    .venv/bin/python bench/fleet.py                        # -> bench/results/fleet-cpu.json
    .venv/bin/python bench/fleet.py --rounds 3 --window 20 --out /tmp/fleet.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.fleet.keys import FleetKeys  # noqa: E402
from pipeline.fleet.registry import CameraRegistry  # noqa: E402
from tests.support.fleet import Fleet, now_ms, owners  # noqa: E402
from tests.support.live import (  # noqa: E402
    FPS,
    H,
    W,
    make_live_assets,
    wait_for,
)
from tests.support.rtsp_server import RtspServer  # noqa: E402
from tests.support.servers import RedisServer, free_port  # noqa: E402

START_S = 180.0


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))], 3)


def summary(xs: list[float]) -> dict[str, Any]:
    return {"n": len(xs), "p50_s": pct(xs, 50), "p99_s": pct(xs, 99), "max_s": round(max(xs), 3) if xs else None,
            "mean_s": round(statistics.fmean(xs), 3) if xs else None}


def first_entry_after(client: Any, cam: str, after_ms: int, not_node: str | None = None) -> int | None:
    """ms (entry id) of the first entry of ``cam`` newer than ``after_ms`` (written by another node than
    ``not_node``)."""
    for eid, f in client.xrange(f"dpt:stream:{cam}:frames", min=f"{after_ms + 1}-0", count=2000):
        if not_node is None or f.get(b"node", b"").decode() != not_node:
            return int(eid.decode().split("-")[0])
    return None


def settled(client: Any, cams: list[str], nodes: list[str], since_ms: int) -> bool:
    own = owners(client, cams)
    if len(own) < len(cams) or max(Counter(own.values()).values()) > -(-len(cams) // len(nodes)):
        return False
    return all(first_entry_after(client, c, since_ms) is not None for c in cams)


def handovers(fleet: Fleet, client: Any, cams: list[str], rounds: int, sig: int) -> list[float]:
    out: list[float] = []
    for i in range(rounds):
        own = owners(client, cams)
        victim = sorted(set(own.values()))[i % len(set(own.values()))]
        moved = [c for c, n in own.items() if n == victim]
        t0 = now_ms(client)
        fleet.nodes[victim].signal(sig)
        for cam in moved:
            got = wait_for(lambda c=cam, t=t0, v=victim: first_entry_after(client, c, t, v), 60, f"{cam} elsewhere")
            out.append((got - t0) / 1000.0)
        fleet.nodes[victim].proc.wait(60)
        fleet.start(victim)  # back, and the fleet rebalances before the next round
        back = now_ms(client)
        wait_for(lambda b=back, v=victim: settled(client, cams, list(fleet.nodes), b) and
             v in owners(client, cams).values(), START_S, "the fleet rebalanced")
        print(f"  {signal.Signals(sig).name} {i + 1}/{rounds}: {[round(x, 2) for x in out[-len(moved):]]}",
              flush=True)
    return out


def max_gap_s(client: Any, cams: list[str], start_ms: int, end_ms: int) -> float:
    """The longest time between two consecutive entries of any of ``cams`` within the window."""
    gap = 0
    for c in cams:
        ms = [int(e[0].decode().split("-")[0])
              for e in client.xrange(f"dpt:stream:{c}:frames", min=f"{start_ms}-0", max=f"{end_ms}-0")]
        gap = max([gap, *(b - a for a, b in itertools.pairwise(ms))])
    return gap / 1000.0


def add_latency(fleet: Fleet, client: Any, cameras: RtspServer, cam: str, others: list[str],
                rounds: int) -> tuple[list[float], list[float], list[float]]:
    """Per round: add to first entry, and the other cameras' longest gap around the add (and in a quiet window
    before it, for comparison)."""
    reg = CameraRegistry(client, FleetKeys("dpt"))
    out, gaps, quiet = [], [], []
    for _ in range(rounds):
        time.sleep(4.0)
        t0 = now_ms(client)
        quiet.append(max_gap_s(client, others, t0 - 4000, t0))
        reg.add([{"id": cam, "uri": cameras.url(cam)}], replace=True)
        got = wait_for(lambda t=t0: first_entry_after(client, cam, t), 60, f"{cam}'s first entry")
        out.append((got - t0) / 1000.0)
        time.sleep(2.0)
        gaps.append(max_gap_s(client, others, t0, got + 2000))
        reg.remove(cam)
        wait_for(lambda: cam not in owners(client, [cam]), 60, f"{cam} released")
    return out, gaps, quiet


def window_fps(client: Any, cams: list[str], start_ms: int, end_ms: int) -> float:
    n = sum(len(client.xrange(f"dpt:stream:{c}:frames", min=f"{start_ms}-0", max=f"{end_ms}-0")) for c in cams)
    return n / ((end_ms - start_ms) / 1000.0)


def throughput(fleet: Fleet, client: Any, cameras: RtspServer, cams: list[str], warm: float, window: float,
               workdir: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    # run: the same config, the cameras as --source flags
    cfg = fleet.config(max_cameras=len(cams))
    args = [sys.executable, "-m", "pipeline.cli", "run", str(cfg), "--metrics-port", str(free_port())]
    for c in cams:
        args += ["--source", f"{c}={cameras.url(c)}"]
    log = (workdir / "run.log").open("wb")
    proc = subprocess.Popen(args, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=log,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for(lambda: all(client.xlen(f"dpt:stream:{c}:frames") for c in cams), START_S, "run streaming")
        time.sleep(warm)
        t0 = now_ms(client)
        time.sleep(window)
        out["run_fps"] = round(window_fps(client, cams, t0, now_ms(client)), 2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    for c in cams:
        client.delete(f"dpt:stream:{c}:frames")
    reg = CameraRegistry(client, FleetKeys("dpt"))
    reg.add([{"id": c, "uri": cameras.url(c)} for c in cams], replace=True)
    node = fleet.start("solo", max_cameras=len(cams))
    try:
        wait_for(lambda: all(client.xlen(f"dpt:stream:{c}:frames") for c in cams), START_S, "node streaming")
        time.sleep(warm)
        t0 = now_ms(client)
        time.sleep(window)
        out["node_fps"] = round(window_fps(client, cams, t0, now_ms(client)), 2)
    finally:
        node.signal(signal.SIGTERM)
        node.proc.wait(60)
        del fleet.nodes["solo"]
    for c in cams:
        reg.remove(c)
    out["node_over_run"] = round(out["node_fps"] / out["run_fps"], 3) if out["run_fps"] else 0.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10, help="kills and SIGTERMs each (default 10)")
    ap.add_argument("--add-rounds", type=int, default=5)
    ap.add_argument("--lease-s", type=float, default=5.0, help="fleet.lease_s (the default is 5)")
    ap.add_argument("--fps", type=int, default=FPS, help="each camera's frame rate")
    ap.add_argument("--window", type=float, default=30.0, help="throughput window, seconds")
    ap.add_argument("--warm", type=float, default=10.0, help="seconds streamed before the throughput window")
    ap.add_argument("--skip", action="append", default=[], choices=["handover", "add", "throughput"])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fleet-cpu.json")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dptstream-fleet-bench-"))
    assets = make_live_assets(work / "assets")
    cams = [f"cam{i}" for i in range(8)]
    cameras = RtspServer(assets.raw, W, H, [f"{c}:fps={a.fps}" for c in cams], fps=a.fps, log=work / "rtsp.log")
    redis = RedisServer(work / "redis")
    cameras.start()
    redis.start()
    client = redis.client()
    fleet = Fleet(assets, redis.url, work, lease_s=a.lease_s)
    results: dict[str, Any] = {}
    try:
        if "throughput" not in a.skip:
            print("throughput: 8 cameras, run then node", flush=True)
            results["throughput_8_cameras"] = throughput(fleet, client, cameras, cams, a.warm, a.window, work)
            print(f"  {results['throughput_8_cameras']}", flush=True)
        if "handover" not in a.skip or "add" not in a.skip:
            four = cams[:4]
            CameraRegistry(client, FleetKeys("dpt")).add([{"id": c, "uri": cameras.url(c)} for c in four],
                                                        replace=True)
            fleet.start("n1")
            fleet.start("n2")
            t = now_ms(client)
            wait_for(lambda: settled(client, four, ["n1", "n2"], t), START_S, "two nodes streaming four cameras")
            if "add" not in a.skip:
                print("add to first entry", flush=True)
                lat, gaps, quiet = add_latency(fleet, client, cameras, cams[7], four, a.add_rounds)
                results["add_to_first_entry"] = summary(lat)
                results["other_cameras_max_gap_during_add"] = summary(gaps)
                results["other_cameras_max_gap_before_add"] = summary(quiet)
                print(f"  {results['add_to_first_entry']}; gaps {gaps} (before: {quiet})", flush=True)
            if "handover" not in a.skip:
                print("handovers after SIGKILL", flush=True)
                results["handover_sigkill"] = summary(handovers(fleet, client, four, a.rounds, signal.SIGKILL))
                print("handovers after SIGTERM", flush=True)
                results["handover_sigterm"] = summary(handovers(fleet, client, four, a.rounds, signal.SIGTERM))
    finally:
        fleet.stop_all()
        cameras.stop()
        redis.stop()
    doc = {
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "setup": {"lease_s": a.lease_s, "reconcile_s": 0.25, "camera_fps": a.fps, "camera_size": [W, H],
                  "rounds_each": a.rounds, "add_rounds": a.add_rounds, "window_s": a.window,
                  "checkpoints": "tiny random-weight DPT (network 96), torch CPU, 1 thread per node",
                  "handover": "2 nodes, 4 cameras; time from the signal to the first entry another node wrote"},
        "results": results,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
