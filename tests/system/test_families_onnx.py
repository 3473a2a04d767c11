"""ONNX export of every supported DPT-family architecture: FP32 graphs equal torch, FP16 graphs' depth maps
correlate >= 0.99 with torch FP32 (onnxruntime, CPU), at the network shape of a real 720p source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from engines.base import EngineError
from engines.loading import LoadedModel, load_model
from engines.onnx_export import OnnxRuntimeEngine, export_onnx, onnx_cache_path
from engines.preprocess import Preprocessor
from pipeline.checkpoints import DEPTH_FAMILIES, make_family_checkpoint
from pipeline.sample import make_frames

pytestmark = pytest.mark.slow
SRC_W, SRC_H = 1280, 720


@pytest.fixture(scope="module", params=(*DEPTH_FAMILIES, "dpt-hybrid-seg"))
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[str, LoadedModel, torch.Tensor, dict[str, Path]]:
    name = str(request.param)
    d = tmp_path_factory.mktemp(f"onnx-{name}")
    task = "segmentation" if name.endswith("-seg") else "depth"
    loaded = load_model(task, str(make_family_checkpoint(d / "ckpt", name)))  # type: ignore[arg-type]
    images = [torch.from_numpy(f.copy()) for f in make_frames(3, SRC_W, SRC_H, seed=0)]
    x = Preprocessor(loaded.preprocess)(images)
    shape = loaded.preprocess.network_shape(SRC_H, SRC_W)
    graphs = {p: export_onnx(loaded, d / f"{p}.onnx", p, shape=shape) for p in ("fp32", "fp16")}  # type: ignore[arg-type]
    return name, loaded, x, graphs


def _corr(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return [float(np.corrcoef(u.flatten().double().numpy(), v.flatten().double().numpy())[0, 1])
            for u, v in zip(a, b, strict=True)]


def test_fp32_equals_torch_and_fp16_correlates(family: tuple[str, LoadedModel, torch.Tensor, dict[str, Path]]
                                               ) -> None:
    name, loaded, x, graphs = family
    with torch.inference_mode():
        ref = loaded.module(x)
    span = float(ref.max() - ref.min())
    assert span > 0.1
    fp32 = OnnxRuntimeEngine(graphs["fp32"], threads=2).run(x)
    fp16 = OnnxRuntimeEngine(graphs["fp16"], threads=2).run(x)
    assert fp32.shape == fp16.shape == ref.shape
    err32 = float((fp32 - ref).abs().max())
    assert err32 <= 1e-4 * span, (name, err32, span)
    if loaded.task == "depth":
        corr = _corr(fp16, ref)
        print(f"{name}: input {tuple(x.shape[-2:])}, fp32 max err {err32:.2e}, fp16 corr {min(corr):.5f}")
        assert min(corr) >= 0.99, (name, corr)
    else:
        agree = (fp16.argmax(1) == ref.argmax(1)).float().mean(dim=(1, 2))
        assert float(agree.min()) >= 0.99, (name, agree)


def test_dynamic_batch(family: tuple[str, LoadedModel, torch.Tensor, dict[str, Path]]) -> None:
    _, _, x, graphs = family
    eng = OnnxRuntimeEngine(graphs["fp32"], threads=2)
    one = eng.run(x[:1])
    three = eng.run(x)
    assert one.shape[0] == 1 and three.shape[0] == 3
    assert torch.allclose(one[0], three[0], atol=1e-4 * float(three.abs().max()))


def test_cache_path_is_keyed_by_shape(family: tuple[str, LoadedModel, torch.Tensor, dict[str, Path]],
                                      tmp_path: Path) -> None:
    _, loaded, _, _ = family
    a = onnx_cache_path(tmp_path, loaded, "fp16", shape=(98, 168))
    b = onnx_cache_path(tmp_path, loaded, "fp16", shape=(168, 98))
    assert a != b and "168x98" in a.name and "98x168" in b.name
    if loaded.preprocess.fixed_shape is None:
        with pytest.raises(EngineError, match="source-size"):
            onnx_cache_path(tmp_path, loaded, "fp16")
    else:
        assert onnx_cache_path(tmp_path, loaded, "fp16") == onnx_cache_path(
            tmp_path, loaded, "fp16", shape=loaded.preprocess.fixed_shape)


def test_build_engine_onnx_only_exports_at_the_sources_network_shape(tmp_path: Path) -> None:
    import re

    from tests.support.servers import cli

    ckpt = make_family_checkpoint(tmp_path / "da", "depth-anything-v2")
    p = cli("build-engine", "--onnx-only", "-m", f"depth={ckpt}", "--tasks", "depth", "--source-size", "1280x720",
            "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "onnx"), "--threads", "2")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 2 and all("depth-fp" in ln and "-168x98.onnx" in ln for ln in lines), lines
    corr = [float(m) for m in re.findall(r"depth_correlation_min ([0-9.]+)", p.stdout)]
    assert len(corr) == 2 and min(corr) >= 0.99
    bad = cli("build-engine", "--onnx-only", "-m", f"depth={ckpt}", "--tasks", "depth", "--source-size", "wide")
    assert bad.returncode == 2 and "--source-size 'wide'" in bad.stderr
