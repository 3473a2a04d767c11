"""``dptstream bench`` as a user runs it: a tiny CPU run into a real redis-server, JSON checked against the
contract in README.md "Benchmark"; plus the pure helpers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import RedisServer, cli, model_args

RESULT_KEYS = {"mode", "task", "model", "backend", "batch", "input", "fps", "latency_ms", "frames"}


@pytest.mark.slow
def test_bench_tiny_cpu_run_writes_the_contract_json(assets: dict[str, Path], redis_server: RedisServer,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "results" / "bench.json"
    p = cli("bench", *model_args(assets), "--clip", str(assets["clip360"]), "--device", "cpu",
            "--threads", "1", "--batch-sizes", "2", "--e2e-batch", "2", "--streams", "2", "--seconds", "0.2",
            "--min-calls", "2", "--warmup", "1", "--repeat", "1", "--naive-frames", "4",
            "--redis", redis_server.url, "--work-dir", str(tmp_path / "work"), "--out", str(out), timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == str(out)
    doc = json.loads(out.read_text())

    assert doc["command"].startswith("dptstream bench ")
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", doc["date"])
    assert set(doc["machine"]) >= {"cpu", "cores", "gpu", "driver", "cuda"} and doc["machine"]["cores"] >= 1
    assert set(doc["versions"]) >= {"dptstream", "torch", "transformers", "tensorrt", "av"}
    assert doc["versions"]["torch"] and doc["versions"]["av"]

    results: list[dict[str, Any]] = doc["results"]
    for r in results:
        assert set(r) >= RESULT_KEYS, r
        assert r["mode"] in ("engine", "e2e", "naive")
        assert r["fps"] > 0 and r["frames"] > 0
        assert set(r["latency_ms"]) == {"p50", "p99"} and 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
        assert r["input"] == [192, 192]
    engine = {(r["task"], r["batch"]) for r in results if r["mode"] == "engine"}
    assert engine == {("segmentation", 2), ("depth", 2), ("segmentation+depth", 2)}
    (e2e,) = [r for r in results if r["mode"] == "e2e"]
    assert e2e["task"] == "segmentation+depth" and e2e["streams"] == 2 and e2e["source"] == [640, 360]
    assert e2e["frames"] == 2 * 20  # every frame of both streams reached Redis
    assert e2e["backend"] == "torch-cpu-fp32" and e2e["threads"] == 1
    assert {"infer_ms", "postprocess_ms"} <= set(e2e["stage_ms"])
    naive = [r for r in results if r["mode"] == "naive"]
    assert naive and all(r["frames"] == 3 for r in naive)  # 4 frames, the first one warms up

    ratios = {r["ratio"]: r for r in doc["ratios"]}
    assert set(ratios) == {"e2e/engine", "e2e/naive"}
    assert ratios["e2e/engine"]["batch"] == 2 and ratios["e2e/engine"]["value"] > 0
    best_naive = max(r["fps"] for r in naive)
    assert ratios["e2e/naive"]["value"] == pytest.approx(e2e["fps"] / best_naive, rel=0.01)
    # the benchmark's Redis keys are removed afterwards
    assert redis_server.client().keys("bench-*") == []


@pytest.mark.slow
def test_bench_bad_input_is_one_line(tmp_path: Path) -> None:
    p = cli("bench", "--device", "cpu", "--redis", "redis://127.0.0.1:1/0", "--work-dir", str(tmp_path))
    assert p.returncode != 0 and "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach Redis" in lines[0], p.stderr
    p = cli("bench", "--device", "cpu", "--variants", "fp16", "--modes", "engine")
    assert p.returncode == 2 and "on CPU fp32, ov-fp32, ov-bf16 are measured" in p.stderr and "Traceback" not in p.stderr
    p = cli("bench", "--batch-sizes", "0,x")
    assert p.returncode == 2 and "--batch-sizes" in p.stderr


@pytest.mark.slow
def test_bench_families_adds_an_engine_row_per_depth_family(assets: dict[str, Path], tmp_path: Path) -> None:
    from pipeline.checkpoints import DEPTH_FAMILIES

    out = tmp_path / "families.json"
    p = cli("bench", *model_args(assets), "--clip", str(assets["clip360"]), "--device", "cpu", "--modes", "engine",
            "--families", "--threads", "1", "--batch-sizes", "2", "--seconds", "0", "--min-calls", "1",
            "--warmup", "0", "--work-dir", str(tmp_path / "work"), "--out", str(out), timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [r for r in json.loads(out.read_text())["results"] if "architecture" in r]
    want = [f for f in DEPTH_FAMILIES if f != "dpt"]
    assert len(rows) == len(want) and all(r["mode"] == "engine" and r["fps"] > 0 for r in rows)
    for name, r in zip(want, rows, strict=True):
        assert r["model"].startswith(name + " tiny") and r["task"] == "depth" and r["source"] == [640, 360]
        assert r["depth_kind"] == ("metric" if name.endswith("metric") else "relative_inverse")
    shapes = {r["model"].split()[0]: tuple(r["input"]) for r in rows}
    assert shapes["depth-anything-v2"] == (98, 168)  # 640x360 at 98, aspect kept, multiples of 14


@pytest.mark.slow
def test_main_rows_report_the_network_shape_used_for_the_clip(assets: dict[str, Path], tmp_path: Path) -> None:
    """A checkpoint that keeps the aspect ratio (Depth Anything V2: multiples of 14) reports the shape the clip
    is fed at, not its processor's square size."""
    from pipeline.checkpoints import make_family_checkpoint

    ckpt = make_family_checkpoint(tmp_path / "da2", "depth-anything-v2")
    size = json.loads((ckpt / "preprocessor_config.json").read_text())["size"]
    out = tmp_path / "da2.json"
    p = cli("bench", "-m", f"depth={ckpt}", "--tasks", "depth", "--clip", str(assets["clip360"]), "--device", "cpu",
            "--modes", "engine", "--threads", "1", "--batch-sizes", "1", "--seconds", "0", "--min-calls", "1",
            "--warmup", "0", "--work-dir", str(tmp_path / "work"), "--out", str(out), timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    (row,) = [r for r in json.loads(out.read_text())["results"] if r["mode"] == "engine"]
    assert row["task"] == "depth"
    assert row["input"] == [98, 168], (row["input"], size)  # 640x360 at 98, aspect kept, multiples of 14
