"""Load DPT checkpoints with transformers from a hub id or a local directory."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engines.base import ModelLoadError, PreprocessSpec, Task

log = logging.getLogger(__name__)

_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


class SegmentationHead(nn.Module):
    """DPT segmentation without the auxiliary head: ``pixel_values -> logits`` (N x C x h x w)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values)
        return out.logits  # type: ignore[no-any-return]


class DepthHead(nn.Module):
    """DPT depth: ``pixel_values -> predicted_depth`` (N x h x w)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values)
        return out.predicted_depth  # type: ignore[no-any-return]


@dataclass
class LoadedModel:
    task: Task
    model_id: str
    module: nn.Module  # SegmentationHead or DepthHead, eval mode, on CPU, fp32
    preprocess: PreprocessSpec
    labels: dict[int, str]
    weights_hash: str


def _spec_from_processor(proc: Any, input_size: int | None) -> PreprocessSpec:
    size = getattr(proc, "size", None)
    if isinstance(size, int):
        h = w = size
    else:
        get = size.get if isinstance(size, dict) else (lambda k: getattr(size, k, None))
        h = int(get("height") or get("shortest_edge") or 384)
        w = int(get("width") or get("shortest_edge") or h)
    if h != w:
        log.info("checkpoint asks for %dx%d input; DPT needs a square grid, using %d", w, h, max(h, w))
        h = w = max(h, w)
    if input_size:
        h = w = int(input_size)
    resample = getattr(proc, "resample", 3)
    rname = _RESAMPLE.get(int(getattr(resample, "value", resample)), "bicubic")
    mean = tuple(float(v) for v in (getattr(proc, "image_mean", None) or (0.5, 0.5, 0.5)))
    std = tuple(float(v) for v in (getattr(proc, "image_std", None) or (0.5, 0.5, 0.5)))
    scale = float(getattr(proc, "rescale_factor", 1 / 255) or 1 / 255)
    if not getattr(proc, "do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return PreprocessSpec(
        height=h,
        width=w,
        resample=rname,  # type: ignore[arg-type]
        rescale_factor=scale,
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
    )


def weights_hash(module: nn.Module) -> str:
    """A stable hash of the weights (shapes + a strided sample of every tensor), cheap on big models."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def load_model(task: Task, model_id: str, input_size: int | None = None) -> LoadedModel:
    """Load a DPT checkpoint for ``task`` from a hub id or local directory (offline-friendly)."""
    from transformers import AutoImageProcessor, DPTForDepthEstimation, DPTForSemanticSegmentation
    from transformers.utils import logging as hf_logging

    local = Path(os.path.expanduser(model_id))
    if local.exists() and not local.is_dir():
        raise ModelLoadError(f"model path {model_id!r} is a file; pass the checkpoint's directory")
    if not local.exists() and (model_id.startswith((".", "/", "~")) or model_id.count("/") > 1):
        raise ModelLoadError(f"model directory {model_id!r} does not exist")
    src = str(local) if local.exists() else model_id
    import huggingface_hub.utils.logging as hub_logging

    verbosity, hub_verbosity = hf_logging.get_verbosity(), hub_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hub_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        cls = DPTForSemanticSegmentation if task == "segmentation" else DPTForDepthEstimation
        kwargs: dict[str, Any] = {"attn_implementation": "sdpa"}
        if task == "segmentation":
            kwargs["use_auxiliary_head"] = False  # never computed at inference
        try:
            model = cls.from_pretrained(src, **kwargs)
        except (ValueError, TypeError):
            kwargs.pop("attn_implementation")
            model = cls.from_pretrained(src, **kwargs)
        try:
            proc = AutoImageProcessor.from_pretrained(src)
        except Exception:  # no preprocessor_config.json: DPT defaults
            log.warning("no preprocessor config for %s; using DPT defaults (384, bicubic, 0.5/0.5)", model_id)
            proc = None
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"cannot load {task} model {model_id!r}: {first} "
            "(pass --model {task}=PATH to a local checkpoint directory, or allow access to the model hub)"
        ) from e
    except Exception as e:  # wrong architecture, corrupt weights, ...
        raise ModelLoadError(f"cannot load {task} model {model_id!r}: {type(e).__name__}: {e}") from e
    finally:
        hf_logging.set_verbosity(verbosity)
        hub_logging.set_verbosity(hub_verbosity)
        hf_logging.enable_progress_bar()
    model.eval()
    if task == "segmentation":
        id2label = {int(k): str(v) for k, v in (model.config.id2label or {}).items()}
        head: nn.Module = SegmentationHead(model)
    else:
        id2label = {}
        head = DepthHead(model)
    spec = _spec_from_processor(proc, input_size) if proc is not None else PreprocessSpec(384, 384)
    return LoadedModel(
        task=task,
        model_id=model_id,
        module=head.eval(),
        preprocess=spec,
        labels=id2label,
        weights_hash=weights_hash(model),
    )
