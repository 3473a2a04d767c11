"""Pure helpers of the benchmark: percentiles and the e2e/engine, e2e/naive ratios."""

from __future__ import annotations

import pytest


def test_percentile_and_ratios() -> None:
    from pipeline.benchmark.results import ratios
    from pipeline.benchmark.timing import percentile

    assert percentile([], 50) == 0.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    base = {"task": "segmentation+depth", "backend": "torch-cpu-fp32", "batch": 8, "threads": 1}
    results = [
        {**base, "mode": "engine", "fps": 20.0},
        {**base, "mode": "e2e", "fps": 18.0},
        {**base, "mode": "naive", "fps": 6.0, "batch": 1, "threads": 2},
        {**base, "mode": "naive", "fps": 9.0, "batch": 1, "threads": 1},
        {**base, "mode": "engine", "fps": 40.0, "threads": 2},  # another engine configuration: not compared
    ]
    out = {r["ratio"]: r for r in ratios(results)}
    assert out["e2e/engine"]["value"] == 0.9
    assert out["e2e/naive"]["value"] == 2.0 and out["e2e/naive"]["naive_threads"] == 1  # the fastest naive
