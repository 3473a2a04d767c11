"""Every DPT family on CUDA: FP16 + CUDA graphs captured per network shape, depth maps against torch FP32 on
CPU (correlation >= 0.99). Skips without CUDA (runs where a GPU is, e.g. in bench/gpu_check.sh's pytest step)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engines import EngineConfig, Preprocessor, create_engine
from pipeline.checkpoints import DEPTH_FAMILIES, make_family_checkpoint
from pipeline.sample import make_frames

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA GPU (runs in bench/gpu_check.sh)")]


@pytest.mark.parametrize("family", DEPTH_FAMILIES)
def test_fp16_graphs_per_shape_match_cpu_fp32(family: str, tmp_path: Path) -> None:
    ckpt = make_family_checkpoint(tmp_path / family, family)
    cpu = create_engine(EngineConfig(task="depth", model=str(ckpt), backend="torch", device="cpu"))
    gpu = create_engine(EngineConfig(task="depth", model=str(ckpt), backend="torch", device="cuda",
                                     precision="fp16", max_batch=4, cuda_graphs=True))
    land = [torch.from_numpy(f.copy()) for f in make_frames(2, 1280, 720, seed=0)]
    port = [torch.from_numpy(f.copy()) for f in make_frames(2, 720, 1280, seed=1)]
    shapes = [gpu.spec.network_shape(720, 1280), gpu.spec.network_shape(1280, 720)]
    gpu.warmup(shapes)  # type: ignore[attr-defined]
    assert set(gpu.graph_shapes) == set(shapes)  # type: ignore[attr-defined]
    for images in (land, port):
        x32 = Preprocessor(cpu.spec.preprocess)(images)
        ref = cpu.infer(x32)["depth"]
        x16 = Preprocessor(gpu.spec.preprocess, "cuda", torch.float16)([im.cuda() for im in images])
        out = gpu.infer(x16)["depth"].cpu()
        assert out.shape == ref.shape and torch.isfinite(out).all()
        for a, b in zip(out, ref, strict=True):
            corr = float(np.corrcoef(a.flatten().double().numpy(), b.flatten().double().numpy())[0, 1])
            assert corr >= 0.99, (family, corr)
    gpu.close()
