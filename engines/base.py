"""The one small interface between the runtime (``pipeline``) and the inference backends.

``pipeline`` only sees :class:`Engine` and :func:`engines.create_engine`; it never imports a backend module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import torch

Task = Literal["segmentation", "depth"]
TASKS: tuple[Task, ...] = ("segmentation", "depth")
DEFAULT_MODELS: dict[Task, str] = {"segmentation": "Intel/dpt-large-ade", "depth": "Intel/dpt-large"}
OUTPUT_NAME: dict[Task, str] = {"segmentation": "logits", "depth": "depth"}


class EngineError(Exception):
    """A problem with a model or backend, reported to the user as one line."""


class ModelLoadError(EngineError):
    """The model id / path cannot be loaded (unknown id, no hub access, not a DPT checkpoint)."""


class BackendUnavailable(EngineError):
    """The requested backend (e.g. TensorRT, CUDA) is not usable on this machine."""


@dataclass(frozen=True)
class PreprocessSpec:
    """How a checkpoint wants its input: from ``preprocessor_config.json``."""

    height: int
    width: int
    resample: Literal["bicubic", "bilinear", "nearest"] = "bicubic"
    rescale_factor: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class EngineSpec:
    """What a caller needs to know about a loaded engine."""

    task: Task
    model_id: str
    backend: str  # e.g. "torch-cpu-fp32", "torch-cuda-fp16-graphs", "tensorrt-fp16"
    device: str  # "cpu" or "cuda[:N]"
    dtype: torch.dtype
    preprocess: PreprocessSpec
    labels: dict[int, str] = field(default_factory=dict)
    max_batch: int = 8


@runtime_checkable
class Engine(Protocol):
    """An engine takes a batch ``N x 3 x H x W`` on ``spec.device`` in ``spec.dtype`` and returns named outputs.

    Segmentation engines return ``{"logits": N x C x h x w}``; depth engines ``{"depth": N x h x w}``,
    on ``spec.device``, in the engine's compute dtype (float32 on CPU; float16/bfloat16 for torch on CUDA:
    the consumer resizes first and upcasts only what it keeps). ``infer`` may be called from one thread at a
    time. ``warmup`` (optional: the runtime calls it when present, before any frame flows) does the first-run
    work: CUDA graph capture, algorithm selection, lazy kernel loading.
    """

    spec: EngineSpec

    def infer(self, batch: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class EngineConfig:
    """Everything the factory needs; built by the pipeline from its validated config."""

    task: Task
    model: str
    backend: Literal["auto", "tensorrt", "torch"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    max_batch: int = 8
    cuda_graphs: bool = True
    compile: bool = False
    cache_dir: str = "~/.cache/dptstream"
    input_size: int | None = None  # override the checkpoint's square input side
    threads: int | None = None
    # TensorRT FP16: the attention Softmax in float32 (Casts around it) or, False, in FP16 (no Casts: lets
    # TensorRT fuse the attention block where the Casts prevent it; see engines.tensorrt_engine.attention_report)
    fp32_softmax: bool = True
