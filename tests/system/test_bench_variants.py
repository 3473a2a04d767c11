"""Bench variants one after another: nothing of the previous variant is alive when the next one loads
(on a GPU its engines would otherwise still hold their memory while the next captures graphs)."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch

from engines import EngineSpec, PreprocessSpec


class _FakeEngine:
    def __init__(self, task: str) -> None:
        self.spec = EngineSpec(task=task, model_id=task, backend="fake-cpu-fp32", device="cpu",  # type: ignore[arg-type]
                               dtype=torch.float32, preprocess=PreprocessSpec(32, 32))
        self.weights = torch.zeros(1000)  # stands in for GPU memory
        self.closed = False

    def warmup(self) -> None:
        pass

    def infer(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": torch.zeros(x.shape[0], 3, 8, 8)}

    def close(self) -> None:
        self.closed = True


def test_each_variant_is_released_before_the_next_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engines as eng
    from pipeline.benchmark.engine import Inputs
    from pipeline.benchmark.plan import Plan, parse_variants
    from pipeline.benchmark.run import run_bench
    from pipeline.sample import make_clip

    clip = make_clip(tmp_path / "c.mp4", frames=4, width=64, height=48)
    made: list[weakref.ref[_FakeEngine]] = []
    alive_at_creation: list[int] = []

    def create(cfg: Any) -> _FakeEngine:
        gc.collect()  # only references held on purpose keep an engine alive
        alive_at_creation.append(sum(1 for r in made if r() is not None))
        e = _FakeEngine(cfg.task)
        made.append(weakref.ref(e))
        return e

    monkeypatch.setattr(eng, "create_engine", create)
    variants = parse_variants("fp32", "cpu", [1, 2])  # two variants (1 and 2 threads)
    plan = Plan(tasks=["segmentation", "depth"], device="cpu", variants=variants, batches=[1, 2], e2e_batches=[2],
                e2e_variants=[], streams=1, modes=["engine"], redis_url="", min_seconds=0.0, min_calls=1,
                warmup=0, naive_frames=0, soak_seconds=0.0, cache_dir=str(tmp_path), memory_streams=False)
    inp = Inputs(clip, clip, 64, 48, 4, {"segmentation": "s", "depth": "d"}, {"segmentation": "s", "depth": "d"})
    results, _, _ = run_bench(plan, inp)
    assert len(results) == 2 * 2 * 3  # 2 variants x 2 batch sizes x (seg, depth, both)
    # within a variant the first engine is alive while the second loads; none of the previous variant is
    assert alive_at_creation == [0, 1, 0, 1]
    gc.collect()
    assert all(r() is None for r in made)
