"""Benchmark entries, ratios (e2e/engine, e2e/naive) and machine/version facts for the JSON."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.benchmark.e2e import E2EResult
from pipeline.benchmark.engine import Inputs
from pipeline.benchmark.plan import Variant
from pipeline.benchmark.timing import latency_ms, median


# -- machine and versions -----------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    # the ones that decide CPU inference speed (BF16 / INT8 matrix units, AVX-512 widths)
                    flags = sorted(x for x in line.split(":", 1)[1].split() if x.startswith(("amx", "avx512", "avx2")))
                if flags and cpu != (platform.processor() or platform.machine()):
                    break
    except OSError:
        pass
    gpu = driver = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20)
            driver = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            driver = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cpu_flags": flags, "cores": cores, "gpu": gpu, "driver": driver,
            "cuda": torch.version.cuda if torch.cuda.is_available() else None}


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    from pipeline.runtime.app import version as dpt_version

    out: dict[str, str | None] = {"dptstream": dpt_version()}
    for name in ("torch", "transformers", "tensorrt", "openvino", "av"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    if out["tensorrt"] is not None:
        from engines import tensorrt_available

        if not tensorrt_available():  # type stubs only, no runtime
            out["tensorrt"] = None
    return out


def entry(mode: str, task: str, inp: Inputs, backend: str, batch: int, fps: float, lat: dict[str, float],
          frames: int, **extra: Any) -> dict[str, Any]:
    tasks = task.split("+")
    model = " + ".join(inp.model_names[t] for t in tasks)
    shapes = sorted({inp.input_shape.get(t, (0, 0)) for t in tasks})  # network (h, w) actually used
    size: list[int] | list[list[int]] = list(shapes[0]) if len(shapes) == 1 else [list(s) for s in shapes]
    return {"mode": mode, "task": task, "model": model, "backend": backend, "batch": batch, "input": size,
            "fps": round(fps, 2), "latency_ms": lat, "frames": frames, **extra}


def variant_label(backend: str, v: Variant) -> str:
    return backend + (f" t{v.threads}" if v.threads else "")


def e2e_entry(runs: list[E2EResult], task: str, inp: Inputs, backend: str, batch: int, streams: int,
              extra: dict[str, Any]) -> dict[str, Any]:
    """One e2e entry from repeated runs: median fps, pooled latencies; the profile of the median run."""
    fps_list = [r.fps for r in runs]
    mid = sorted(runs, key=lambda r: r.fps)[(len(runs) - 1) // 2]
    out = entry("e2e", task, inp, backend, batch, median(fps_list), latency_ms([x for r in runs for x in r.latencies_s]),
                sum(r.published for r in runs), **extra, streams=streams, source=[inp.width, inp.height],
                fps_runs=[round(f, 2) for f in fps_list],
                cpu_ms_per_frame=round(sum(r.cpu_seconds for r in runs) * 1000 / max(1, sum(r.published for r in runs)),
                                       2),
                stage_ms=mid.stage_ms, batch_mean=round(mid.batch_mean, 2),
                cpu_busy=mid.cpu_busy, thread_cpu_s=mid.thread_cpu_s,
                cpu_ms_per_frame_by_stage=mid.cpu_ms_by_stage, rss_mb=mid.rss_mb)
    if mid.gpu_mem_mb is not None:
        out["gpu_mem_peak_mb"] = max(r.gpu_mem_mb or 0.0 for r in runs)
    return out


def ratios(results: list[dict[str, Any]], with_engine: bool = True) -> list[dict[str, Any]]:
    """e2e / engine (same backend, threads, batch and tasks) and e2e / naive, from one file's entries."""
    out: list[dict[str, Any]] = []
    # against the fastest naive loop measured of each precision (its thread count is in the entry): no
    # strawman baseline, and an FP16 pipeline is compared with an FP16 loop as well as with the FP32 one
    by_precision: dict[str, dict[str, Any]] = {}
    for r in sorted((r for r in results if r["mode"] == "naive"), key=lambda r: -r["fps"]):
        by_precision.setdefault(str(r["backend"]).rsplit("-", 1)[-1], r)
    naive = list(by_precision.values())
    for e in results:
        if e["mode"] != "e2e" or "soak_seconds" in e:
            continue
        for g in results:
            if (with_engine and g["mode"] == "engine" and g["task"] == e["task"] and g["backend"] == e["backend"]
                    and g["batch"] == e["batch"] and g.get("threads") == e.get("threads") and g["fps"] > 0):
                out.append({"ratio": "e2e/engine", "task": e["task"], "backend": e["backend"],
                            "threads": e.get("threads"), "batch": e["batch"], "e2e_fps": e["fps"],
                            "engine_fps": g["fps"], "value": round(e["fps"] / g["fps"], 3)})
        for n in naive:
            if n["task"] == e["task"] and n["fps"] > 0:
                out.append({"ratio": "e2e/naive", "task": e["task"], "backend": e["backend"],
                            "threads": e.get("threads"), "batch": e["batch"], "e2e_fps": e["fps"],
                            "naive_backend": n["backend"], "naive_fps": n["fps"], "naive_threads": n.get("threads"),
                            "value": round(e["fps"] / n["fps"], 3)})
                if e.get("cpu_ms_per_frame") and n.get("cpu_ms_per_frame"):
                    # load-independent: CPU time per frame (what a frame costs, whatever share of the cores
                    # this process got from a busy machine)
                    out[-1]["cpu_ms_per_frame"] = {"e2e": e["cpu_ms_per_frame"], "naive": n["cpu_ms_per_frame"]}
    return out


def default_out(device: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path("bench/results") / f"{'gpu' if device.startswith('cuda') else 'cpu'}-{stamp}.json"
