"""Helpers for the live-camera tests: fast checkpoints, a real RTSP camera clip, an in-process pipeline
with a real ``/metrics`` endpoint, and metric scraping over HTTP."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from engines import Engine
from pipeline.config import PipelineConfig
from pipeline.metrics import Metrics
from pipeline.runtime import Pipeline, RunReport
from pipeline.runtime.app import create_engines, labels_of
from pipeline.sinks import create_sink
from tests.support.rtsp_server import rtsp_available, write_raw_frames

W, H, FPS = 320, 180, 15
NET = 96  # network side of the test checkpoints: ~15 ms per task on one CPU thread


@dataclass
class LiveAssets:
    clip: Path
    raw: Path
    segmentation: Path
    depth: Path


def make_live_assets(d: Path) -> LiveAssets:
    """The camera clip (45 real-content frames, 3 s at 15 fps), its raw frames for the RTSP server and
    the fast checkpoints. Made once per test session: every module passes the same base directory."""
    from pipeline.sample import make_checkpoint, make_clip

    assets = LiveAssets(d / "camera.mp4", d / "camera.rgb", d / "seg", d / "depth")
    if (d / "done").exists():
        return assets
    d.mkdir(parents=True, exist_ok=True)
    make_clip(assets.clip, frames=45, width=W, height=H, fps=FPS, seed=2)
    write_raw_frames(assets.clip, assets.raw, W, H)
    make_checkpoint(assets.segmentation, "segmentation", image_size=NET)
    make_checkpoint(assets.depth, "depth", image_size=NET)
    (d / "done").touch()
    return assets


def session_live_assets(factory: Any) -> LiveAssets:
    """``make_live_assets`` under the session's pytest base temp dir (``tmp_path_factory``)."""
    return make_live_assets(Path(factory.getbasetemp()) / "live-assets")


def need_rtsp() -> None:
    import pytest

    why = rtsp_available()
    if why:
        pytest.fail(why)  # the CI installs the packages: a missing server is a broken setup, not a skip


def make_config(assets: LiveAssets, sources: list[dict[str, Any]], sinks: list[str], **sections: Any
                ) -> PipelineConfig:
    data: dict[str, Any] = {
        "sources": sources,
        "sinks": sinks,
        "models": {"segmentation": str(assets.segmentation), "depth": str(assets.depth)},
        "engine": {"backend": "torch", "device": "cpu", "threads": 1, "batch_size": 4, "max_wait_ms": 5},
        "metrics": {"port": 0, "host": "127.0.0.1"},
    }
    for k, v in sections.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
    return PipelineConfig.model_validate(data)


def engines_for(assets: LiveAssets, tasks: Iterable[str] = ("segmentation", "depth")) -> dict[str, Any]:
    cfg = make_config(assets, [], ["dir:/nonexistent"], tasks=list(tasks))
    return create_engines(cfg)


class DelayEngine(Engine):
    """Our engine interface around a real engine, plus ``delay`` seconds per frame (a busy accelerator)."""

    def __init__(self, inner: Any, delay: float = 0.0) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.delay = delay

    def infer(self, batch: Any) -> Any:
        if self.delay:
            time.sleep(self.delay * int(batch.shape[0]))
        return self.inner.infer(batch)

    def close(self) -> None:
        pass


class LivePipeline:
    """A pipeline running in a background thread, as ``dptstream run`` wires it, with /metrics on a free port."""

    def __init__(self, cfg: PipelineConfig, engines: dict[str, Any]) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.sinks = [create_sink(uri, cfg, self.metrics) for uri in cfg.sinks]
        for s in self.sinks:
            s.open()
            s.describe(labels_of(engines), {t: str(e.spec.model_id) for t, e in engines.items()})
        self.pipeline = Pipeline(cfg, engines, self.sinks, self.metrics)
        self.pipeline.build()
        self.port = self.metrics.serve(0, "127.0.0.1", self.pipeline.health)
        self.report: RunReport | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.monotonic()

    def _run(self) -> None:
        self.report = self.pipeline.wait()

    def __enter__(self) -> LivePipeline:
        self.pipeline.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 30.0) -> RunReport:
        self.pipeline.request_stop()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "pipeline did not stop"
        for s in self.sinks:
            s.close()
        self.metrics.close()
        assert self.report is not None
        return self.report

    # -- observing it over HTTP, as Prometheus and a kubelet would ----------------------------------------
    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def probe(self, path: str) -> tuple[int, dict[str, Any]]:
        code, body = self.get(path)
        return code, json.loads(body)

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        code, text = self.get("/metrics")
        assert code == 200
        return parse_metrics(text)

    def metric(self, name: str, **labels: str) -> float:
        return metric(self.scrape(), name, **labels)


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return out


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def entries(client: Any, sid: str, prefix: str = "dpt") -> list[dict[str, bytes]]:
    return [{k.decode(): v for k, v in f.items()} for _id, f in client.xrange(f"{prefix}:stream:{sid}:frames")]


def make_certs(d: Path) -> Path:
    """A test CA, server and client certificates for 127.0.0.1 (openssl), and an unrelated CA."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    d.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=dptstream test CA")
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", "-extfile", "ext")
    # a CA that did not sign the server's certificate
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other-ca.crt",
            "-days", "2", "-subj", "/CN=someone else")
    return d
