"""Timers, percentiles, CPU seconds per thread and RSS for the benchmark."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100) of ``values``; 0.0 for none."""
    if not values:
        return 0.0
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def latency_ms(values_s: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values_s, 50) * 1000, 3), "p99": round(percentile(values_s, 99) * 1000, 3)}


def rss_mb() -> float:
    """Resident set size of this process (Linux ``/proc``; 0.0 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return 0.0


class Timer:
    """Per-call latencies and total wall time of a timed loop; CUDA work is waited for at each call's end."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.calls: list[float] = []
        self.frames = 0
        self.seconds = 0.0
        self.cpu_seconds = 0.0  # this process's CPU time over the timed region (all threads)

    def run(self, fn: Callable[[], int], warmup: int, min_calls: int, min_seconds: float) -> Timer:
        import torch

        for _ in range(warmup):
            fn()
        self._sync(torch)
        c_start = time.process_time()
        t_start = time.perf_counter()
        while len(self.calls) < min_calls or time.perf_counter() - t_start < min_seconds:
            t0 = time.perf_counter()
            self.frames += fn()
            self._sync(torch)
            self.calls.append(time.perf_counter() - t0)
        self.seconds = time.perf_counter() - t_start
        self.cpu_seconds = time.process_time() - c_start
        return self

    @property
    def cpu_ms_per_frame(self) -> float:
        return round(self.cpu_seconds / self.frames * 1000, 2) if self.frames else 0.0

    def _sync(self, torch: Any) -> None:
        if self.cuda:
            # a blocking-sync event on the stream the engines ran on: the host sleeps while it waits, so
            # cpu_ms_per_frame counts the host's work, not a core spinning in cudaDeviceSynchronize
            ev = torch.cuda.Event(blocking=True)
            ev.record()
            ev.synchronize()

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def thread_cpu(kinds: dict[int, str] | None = None) -> dict[int, tuple[str, float]]:
    """CPU seconds used so far by each thread of this process: ``{tid: (name, seconds)}`` (Linux ``/proc``).

    Threads that Python did not start are told apart by their kernel name: FFmpeg names its codec threads
    ``av:<codec>:...`` (``codec``); the rest, torch's intra-op (OpenMP) workers above all, are ``other``.
    ``kinds`` caches each thread's kind between calls (fewer reads of ``/proc``).
    """
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid)) or (kinds.get(int(tid)) if kinds is not None else None) or _native_kind(tid)
        if kinds is not None:
            kinds.setdefault(int(tid), name)
        name = "source" if name.startswith("source-") else name.removeprefix("stage-")
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def _native_kind(tid: str) -> str:
    try:
        with open(f"/proc/self/task/{tid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        return "other"
    return "codec" if comm.startswith("av:") else "other"


# thread kinds -> the stage they work for (``other``: torch's intra-op workers, shared by every torch op)
STAGE_OF_THREAD = {"source": "decode", "codec": "decode", "preprocess": "preprocess", "infer": "infer",
                   "postprocess": "postprocess", "publish": "publish", "MainThread": "bench"}
HOST_STAGES = ("decode", "preprocess", "postprocess", "publish")


def cpu_ms_per_frame_by_stage(thread_cpu_s: dict[str, float], frames: int) -> dict[str, float]:
    """CPU milliseconds per published frame of each stage's threads (see :data:`STAGE_OF_THREAD`), plus
    ``host``: the sum over decode, preprocess, postprocess and publish (what a frame costs outside the engine
    thread; the intra-op workers in ``other`` are not in it)."""
    if frames <= 0:
        return {}
    out: dict[str, float] = {}
    for name, secs in thread_cpu_s.items():
        stage = STAGE_OF_THREAD.get(name, "other")
        out[stage] = out.get(stage, 0.0) + secs
    per = {k: round(v * 1000 / frames, 2) for k, v in sorted(out.items())}
    per["host"] = round(sum(out.get(k, 0.0) for k in HOST_STAGES) * 1000 / frames, 2)
    return per


def cpu_by_thread(before: dict[int, tuple[str, float]], last: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per thread kind between two sets of readings (threads that ended keep their last one)."""
    out: dict[str, float] = {}
    for tid, (name, secs) in last.items():
        out[name] = out.get(name, 0.0) + secs - before.get(tid, (name, 0.0))[1]
    return {k: round(v, 2) for k, v in sorted(out.items())}


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Intra-op threads for what runs inside (the engine's and, in e2e, every stage's torch ops)."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def median(values: list[float]) -> float:
    return percentile(values, 50)
