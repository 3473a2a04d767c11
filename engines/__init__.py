"""Inference engines for DPT. The runtime uses :func:`create_engine` and :class:`Engine` only."""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING, Any

from engines.base import (
    DEFAULT_MODELS,
    OUTPUT_NAME,
    TASKS,
    BackendUnavailable,
    Engine,
    EngineConfig,
    EngineError,
    EngineSpec,
    EngineUsageError,
    ModelLoadError,
    PreprocessSpec,
    Task,
    UnsupportedPrecision,
)

if TYPE_CHECKING:
    from engines.preprocess import Preprocessor

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MODELS",
    "OUTPUT_NAME",
    "TASKS",
    "BackendUnavailable",
    "Engine",
    "EngineConfig",
    "EngineError",
    "EngineSpec",
    "EngineUsageError",
    "ModelLoadError",
    "PreprocessSpec",
    "Preprocessor",
    "Task",
    "UnsupportedPrecision",
    "create_engine",
    "openvino_available",
    "tensorrt_available",
]


def __getattr__(name: str) -> Any:
    """``Preprocessor`` on first use: importing ``engines`` (for its names and constants, as the config does)
    must not import torch, which costs seconds on every CLI command."""
    if name == "Preprocessor":
        from engines.preprocess import Preprocessor

        return Preprocessor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None and hasattr(
        importlib.import_module("tensorrt"), "Builder"
    )


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def create_engine(cfg: EngineConfig) -> Engine:
    """Return an engine for ``cfg``: ``tensorrt``, ``openvino``, ``torch``, or ``auto`` (TensorRT if importable
    and a GPU is present, else torch on CUDA, else OpenVINO on the CPU if importable, else torch on CPU).
    Raises :class:`EngineError` subclasses."""
    import torch

    from engines.loading import load_model

    backend = cfg.backend
    gpu = torch.cuda.is_available() and cfg.device != "cpu"
    if backend == "openvino" and cfg.device == "cuda":
        raise EngineUsageError("--engine openvino runs on the CPU; use --device cpu (or auto), or --engine torch")
    if backend == "openvino" and not openvino_available():
        raise BackendUnavailable("--engine openvino asked for, but the openvino package is not installed "
                                 "(pip install openvino, or use --engine torch)")
    if backend == "tensorrt" and not gpu:
        raise BackendUnavailable("--engine tensorrt needs an NVIDIA GPU, and torch sees none")
    if backend == "tensorrt" and not tensorrt_available():
        raise BackendUnavailable(
            "--engine tensorrt asked for, but the tensorrt package is not installed "
            "(pip install 'dptstream[tensorrt]', or use --engine torch)"
        )
    if backend == "auto":
        if gpu or cfg.device == "cuda":  # torch says so in one line when --device cuda finds no GPU
            backend = "tensorrt" if gpu and tensorrt_available() else "torch"
        else:
            backend = "openvino" if openvino_available() else "torch"
            if backend == "openvino":
                from engines.openvino_engine import require_openvino

                try:  # installed but broken (a missing shared library, a partial upgrade): auto still runs
                    require_openvino()
                except BackendUnavailable as e:
                    log.warning("%s: %s; running on torch FP32 instead", cfg.task, e)
                    backend = "torch"
    loaded = load_model(cfg.task, cfg.model, cfg.input_size, max_side=cfg.max_side)
    if backend == "openvino":
        from engines.openvino_engine import OpenVINOEngine

        engine: Engine = OpenVINOEngine(loaded, cfg)
    elif backend == "tensorrt":
        from engines.tensorrt_engine import TensorRTEngine

        engine = TensorRTEngine(loaded, cfg)
    else:
        from engines.torch_engine import TorchEngine

        engine = TorchEngine(loaded, cfg)
    if cfg.backend == "auto":
        log.info("engine for %s: %s on %s", cfg.task, engine.spec.backend, engine.spec.device)
    if engine.spec.backend.startswith("openvino"):  # which precision runs, per task, in every start-up log
        log.info("%s runs in %s on OpenVINO", cfg.task, engine.spec.precision.upper())
    return engine
