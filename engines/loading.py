"""Load DPT-family checkpoints with transformers from a hub id or a local directory, by ``model_type``.

The checkpoint's ``config.json`` is read first and its ``model_type`` picks the transformers class:

- ``dpt``: ViT (Base/Large), hybrid BiT+ViT, or a ``backbone_config`` backbone (BEiT, SwinV2, DINOv2);
  ``DPTForSemanticSegmentation`` for segmentation, ``DPTForDepthEstimation`` for depth;
- ``depth_anything``: Depth Anything V1/V2 (DINOv2 + DPT head), relative or metric (``max_depth``), depth only.

Anything else is refused with one line naming the model type found and what is supported, and so is a
checkpoint whose weights do not cover the model (missing, unexpected or mismatched keys, as
``from_pretrained(output_loading_info=True)`` reports them): a model never runs with freshly initialised weights.

Preprocessing follows the checkpoint's own image processor (:func:`preprocess_spec`); a broken
``preprocessor_config.json`` is an error naming the file, and only a checkpoint without one gets DPT's defaults.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engines.base import DepthKind, EngineSpec, ModelLoadError, PreprocessSpec, Task, error_reason

log = logging.getLogger(__name__)

_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
_RESAMPLE_NAMES = {1: "lanczos", 4: "box", 5: "hamming"}
DPT_BACKBONES = {"beit": "BEiT", "swinv2": "SwinV2", "dinov2": "DINOv2"}
MAX_LABELS = 65536  # class ids 0..65535: what a published 16-bit mask holds (pipeline.frames.MAX_CLASSES)
SUPPORTED: dict[Task, str] = {
    "segmentation": "dpt (ViT, hybrid, BEiT/SwinV2/DINOv2 backbones)",
    "depth": "dpt (ViT, hybrid, BEiT/SwinV2/DINOv2 backbones) and depth_anything (V1/V2, relative or metric)",
}
_MODEL_CLASSES: dict[tuple[Task, str], str] = {
    ("segmentation", "dpt"): "DPTForSemanticSegmentation",
    ("depth", "dpt"): "DPTForDepthEstimation",
    ("depth", "depth_anything"): "DepthAnythingForDepthEstimation",
}
# checkpoint keys of modules that are never run at inference: present in real checkpoints, not an error
_IGNORED_UNEXPECTED = ("auxiliary_head.",)
# architectures that say which task a dpt checkpoint was trained for
_TASK_OF_ARCHITECTURE: dict[str, Task] = {
    "DPTForSemanticSegmentation": "segmentation",
    "DPTForDepthEstimation": "depth",
    "DepthAnythingForDepthEstimation": "depth",
}
_OTHER_TASK: dict[Task, Task] = {"segmentation": "depth", "depth": "segmentation"}


class SegmentationHead(nn.Module):
    """DPT segmentation without the auxiliary head: ``pixel_values -> logits`` (N x C x h x w)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values)
        return out.logits  # type: ignore[no-any-return]


class DepthHead(nn.Module):
    """DPT / Depth Anything depth: ``pixel_values -> predicted_depth`` (N x h x w)."""

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
    model_type: str = "dpt"
    architecture: str = "DPT (ViT)"
    depth_kind: DepthKind | None = None  # depth: "metric" (metres) or "relative_inverse"
    max_depth: float | None = None  # metric checkpoints: the output's upper bound in metres
    activations_per_pixel: float = 0.0  # memory estimate (engines.memory)

    def engine_spec(self, backend: str, device: str, dtype: torch.dtype, max_batch: int) -> EngineSpec:
        """The :class:`EngineSpec` of an engine running this model (what every backend reports alike)."""
        return EngineSpec(task=self.task, model_id=self.model_id, backend=backend, device=device, dtype=dtype,
                          preprocess=self.preprocess, labels=self.labels, max_batch=max_batch,
                          model_type=self.model_type, architecture=self.architecture, depth_kind=self.depth_kind,
                          activations_per_pixel=self.activations_per_pixel)


@dataclass(frozen=True)
class CheckpointInfo:
    """What ``config.json`` says, read before any weights load."""

    model_type: str
    architecture: str  # human-readable, e.g. "DPT (DINOv2 backbone)"
    class_name: str  # the transformers class that loads it for the task
    depth_kind: DepthKind | None
    max_depth: float | None


def _arch_names(cfg: dict[str, Any]) -> str:
    archs = cfg.get("architectures") or []
    return ", ".join(str(a) for a in archs) if archs else "no architectures listed"


def inspect_config(task: Task, model_id: str, cfg: dict[str, Any]) -> CheckpointInfo:
    """Check ``config.json`` (as a dict) against what ``task`` supports; one-line :class:`ModelLoadError` if not."""
    model_type = str(cfg.get("model_type") or "")
    found = f"{model_type!r}" if model_type else "no model_type"
    if (task, model_type) not in _MODEL_CLASSES:
        hint = ""
        if model_type == "zoedepth":
            hint = " (ZoeDepth's metric bins head and padded preprocessing are not supported)"
        elif model_type == "depth_anything" and task == "segmentation":
            hint = f" (a depth checkpoint: pass it as --model depth={model_id})"
        raise ModelLoadError(
            f"{task} model {model_id!r} is a {found} checkpoint ({_arch_names(cfg)}){hint}; "
            f"{task} supports model types {SUPPORTED[task]}"
        )
    for arch in cfg.get("architectures") or []:
        trained_for = _TASK_OF_ARCHITECTURE.get(str(arch))
        if trained_for is not None and trained_for != task:
            raise ModelLoadError(
                f"{task} model {model_id!r} is a {model_type} {trained_for} checkpoint ({arch}), not a {task} one; "
                f"pass it as --model {trained_for}={model_id}, and a {task} checkpoint as --model {task}=..."
            )
        if trained_for is None and str(arch) and not str(arch).startswith(("DPT", "DepthAnything")):
            raise ModelLoadError(
                f"{task} model {model_id!r} is a {model_type} checkpoint for {arch}, not for {task}; "
                f"{task} supports model types {SUPPORTED[task]}"
            )
    backbone = cfg.get("backbone_config") or {}
    backbone_type = str(backbone.get("model_type") or "") if isinstance(backbone, dict) else ""
    if cfg.get("backbone") and not backbone_type:
        raise ModelLoadError(
            f"{task} model {model_id!r} names a timm/hub backbone {cfg.get('backbone')!r} instead of a "
            f"backbone_config; supported backbones are ViT, hybrid BiT+ViT, BEiT, SwinV2 and DINOv2"
        )
    if task == "segmentation":
        id2label = cfg.get("id2label")
        labels = max(len(id2label) if isinstance(id2label, dict) else 0, _int_or_zero(cfg.get("num_labels")))
        if labels > MAX_LABELS:
            raise ModelLoadError(
                f"segmentation model {model_id!r} has {labels} labels; at most {MAX_LABELS:,} are supported "
                "(class ids are published as 16-bit masks)"
            )
    depth_kind: DepthKind | None = None
    max_depth: float | None = None
    if model_type == "dpt":
        if cfg.get("is_hybrid"):
            architecture = "DPT-Hybrid (BiT + ViT)"
        elif backbone_type:
            if backbone_type not in DPT_BACKBONES:
                raise ModelLoadError(
                    f"{task} model {model_id!r} is a dpt checkpoint with a {backbone_type!r} backbone; "
                    f"supported dpt backbones are ViT, hybrid BiT+ViT, {', '.join(DPT_BACKBONES.values())}"
                )
            architecture = f"DPT ({DPT_BACKBONES[backbone_type]} backbone)"
        else:
            architecture = "DPT (ViT)"
        if task == "depth":
            depth_kind = "relative_inverse"
    else:  # depth_anything
        if backbone_type and backbone_type != "dinov2":
            raise ModelLoadError(
                f"depth model {model_id!r} is a depth_anything checkpoint with a {backbone_type!r} backbone; "
                "Depth Anything is supported with its DINOv2 backbone"
            )
        kind = str(cfg.get("depth_estimation_type") or "relative")
        if kind == "metric":
            depth_kind = "metric"
            max_depth = float(cfg.get("max_depth") or 1.0)
            architecture = f"Depth Anything (metric, up to {max_depth:g} m)"
        elif kind == "relative":
            depth_kind = "relative_inverse"
            architecture = "Depth Anything (relative)"
        else:
            raise ModelLoadError(
                f"depth model {model_id!r} has depth_estimation_type {kind!r}; supported are relative and metric"
            )
    return CheckpointInfo(model_type, architecture, _MODEL_CLASSES[(task, model_type)], depth_kind, max_depth)


def _int_or_zero(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def clean_label(label: Any, class_id: int) -> str:
    """A class name fit for one line: control characters (newline, tab, ...) become spaces, ends stripped; an
    empty name becomes ``class_{id}``. Labels come from the checkpoint's ``id2label`` and end up in overlays,
    snapshots, ``show`` lines and ``{prefix}:meta``."""
    text = "".join(" " if unicodedata.category(c) == "Cc" else c for c in str(label)).strip()
    return text or f"class_{class_id}"


def _read_json(path: Path, what: str, model_id: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{what} {path} of model {model_id!r} is not valid JSON: {e}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"cannot read {what} {path} of model {model_id!r}: {error_reason(e, 200)}") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{what} {path} of model {model_id!r} is not a JSON object")
    return data


def _resolve(task: Task, model_id: str) -> tuple[str, Path | None]:
    """``(source for from_pretrained, local directory or None for a hub id)``."""
    local = Path(os.path.expanduser(model_id))
    if local.exists() and not local.is_dir():
        raise ModelLoadError(f"{task} model path {model_id!r} is a file; pass the checkpoint's directory")
    if not local.exists() and (model_id.startswith((".", "/", "~")) or model_id.count("/") > 1):
        raise ModelLoadError(f"{task} model directory {model_id!r} does not exist")
    if local.is_dir():
        return str(local), local
    return model_id, None


def _hub_hint(task: Task) -> str:
    return (f"pass --model {task}=PATH to a local checkpoint directory, or allow access to the model hub")


def read_config(task: Task, model_id: str) -> dict[str, Any]:
    """The checkpoint's ``config.json`` as a dict (local directory or hub id); one-line errors."""
    src, local = _resolve(task, model_id)
    if local is not None:
        path = local / "config.json"
        if not path.is_file():
            content = "is empty" if not any(local.iterdir()) else "has no config.json"
            raise ModelLoadError(
                f"{task} model directory {model_id!r} {content}: not a transformers checkpoint "
                f"(save one with save_pretrained, or pass a hub id such as Intel/dpt-large)"
            )
        return _read_json(path, "config file", model_id)
    from transformers import PretrainedConfig

    try:
        cfg, _ = PretrainedConfig.get_config_dict(src)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load {task} model {model_id!r}: {error_reason(e, 200)} ({_hub_hint(task)})") from e
    return dict(cfg)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' and the hub's own logging and progress bars off while loading (we report in one line)."""
    import huggingface_hub.utils.logging as hub_logging
    from transformers.utils import logging as hf_logging

    verbosity, hub_verbosity = hf_logging.get_verbosity(), hub_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hub_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hub_logging.set_verbosity(hub_verbosity)
        hf_logging.enable_progress_bar()


def _keys(keys: Any, limit: int = 3) -> str:
    items = sorted(str(k[0] if isinstance(k, tuple) else k) for k in keys)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def check_loading_info(task: Task, model_id: str, info: CheckpointInfo, loading: dict[str, Any]) -> None:
    """Refuse weights that do not cover the model: missing (freshly initialised), unexpected or mismatched keys."""
    missing = list(loading.get("missing_keys") or [])
    unexpected = [k for k in (loading.get("unexpected_keys") or []) if not str(k).startswith(_IGNORED_UNEXPECTED)]
    mismatched = list(loading.get("mismatched_keys") or [])
    errors = list(loading.get("error_msgs") or [])
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_keys(missing)})")
    if mismatched:
        problems.append(f"{len(mismatched)} keys with another shape ({_keys(mismatched)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_keys(unexpected)})")
    if errors:
        problems.append(f"load errors ({error_reason(Exception(str(errors[0])), 200)})")
    if problems:
        raise ModelLoadError(
            f"{task} model {model_id!r} ({info.model_type}, {info.architecture}): its weights do not match "
            f"{info.class_name}: {'; '.join(problems)}; refusing to run with randomly initialised weights "
            f"(is it a {info.model_type} {task} checkpoint, and is its weight file complete?)"
        )


def _resample_name(resample: Any, path: str) -> str:
    code = int(getattr(resample, "value", resample))
    if code not in _RESAMPLE:
        name = _RESAMPLE_NAMES.get(code, str(code))
        raise ModelLoadError(
            f"{path}: resample {name} is not supported (bicubic, bilinear or nearest; edit the file to choose one)"
        )
    return _RESAMPLE[code]


def preprocess_spec(proc: Any, input_size: int | None = None, where: str = "preprocessor_config.json"
                    ) -> PreprocessSpec:
    """A :class:`PreprocessSpec` that reproduces ``proc`` (a DPT-style image processor) exactly.

    ``input_size`` overrides the processor's ``size`` (both sides); everything else follows the processor.
    """
    size = getattr(proc, "size", None)
    if isinstance(size, int):
        h = w = size
    else:
        get = size.get if isinstance(size, dict) else (lambda k: getattr(size, k, None))
        sh = get("height") or get("shortest_edge")
        sw = get("width") or get("shortest_edge") or sh
        if not sh or not sw:
            raise ModelLoadError(f"{where}: size {size!r} has no height and width")
        h, w = int(sh), int(sw)
    if input_size:
        h = w = int(input_size)
    rname = _resample_name(getattr(proc, "resample", 3), where)
    mean = tuple(float(v) for v in (getattr(proc, "image_mean", None) or (0.5, 0.5, 0.5)))
    std = tuple(float(v) for v in (getattr(proc, "image_std", None) or (0.5, 0.5, 0.5)))
    if len(mean) == 1:
        mean = mean * 3
    if len(std) == 1:
        std = std * 3
    scale = float(getattr(proc, "rescale_factor", 1 / 255) or 1 / 255)
    if not getattr(proc, "do_rescale", True):
        scale = 1.0
    if not getattr(proc, "do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    _check_normalization(mean, std, scale, where)
    pad = None
    if getattr(proc, "do_pad", False) and getattr(proc, "size_divisor", None):
        pad = int(proc.size_divisor)
    return PreprocessSpec(
        height=h,
        width=w,
        resample=rname,  # type: ignore[arg-type]
        rescale_factor=scale,
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        keep_aspect_ratio=bool(getattr(proc, "keep_aspect_ratio", False)),
        ensure_multiple_of=max(1, int(getattr(proc, "ensure_multiple_of", 1) or 1)),
        do_resize=bool(getattr(proc, "do_resize", True)),
        pad_multiple=pad,
    )


def _check_normalization(mean: tuple[float, ...], std: tuple[float, ...], scale: float, where: str) -> None:
    """Refuse normalisation that would make every pixel NaN or Inf (a zero std divides by zero)."""
    if len(mean) != 3 or not all(math.isfinite(v) for v in mean):
        raise ModelLoadError(f"{where}: image_mean {list(mean)} must be 1 or 3 finite numbers")
    if len(std) != 3 or not all(math.isfinite(v) and v > 0 for v in std):
        raise ModelLoadError(f"{where}: image_std {list(std)} must be 1 or 3 finite numbers above 0")
    if not (math.isfinite(scale) and scale > 0):
        raise ModelLoadError(f"{where}: rescale_factor {scale} must be a finite number above 0")


def _processor_file(task: Task, model_id: str, src: str, local: Path | None) -> Path | None:
    """Path of ``preprocessor_config.json`` (downloaded for a hub id), or ``None`` if the checkpoint has none."""
    if local is not None:
        path = local / "preprocessor_config.json"
        return path if path.exists() else None
    from transformers.utils import cached_file

    try:
        found = cached_file(src, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    except OSError as e:
        raise ModelLoadError(
            f"cannot load the image processor of {task} model {model_id!r}: {error_reason(e, 200)} ({_hub_hint(task)})"
        ) from e
    return Path(found) if found else None


# Processor type names of older transformers that newer ones no longer resolve, with the class that reads the
# same values (a re-saved Intel/dpt-hybrid-midas names "image_processor_type": "DPTFeatureExtractor").
LEGACY_PROCESSOR_TYPES = {"DPTFeatureExtractor": "DPTImageProcessor"}


def legacy_processor_class(raw: dict[str, Any]) -> str | None:
    """The image processor class for a processor config that names a legacy type, else ``None``."""
    for key in ("image_processor_type", "feature_extractor_type"):
        name = raw.get(key)
        if isinstance(name, str) and name in LEGACY_PROCESSOR_TYPES:
            return LEGACY_PROCESSOR_TYPES[name]
    return None


def load_processor_spec(task: Task, model_id: str, input_size: int | None = None) -> PreprocessSpec:
    """The checkpoint's preprocessing. A broken ``preprocessor_config.json`` is a one-line error naming the file;
    only a checkpoint without one gets DPT's defaults (384x384, bicubic, mean/std 0.5), with a warning."""
    from transformers import AutoImageProcessor

    src, local = _resolve(task, model_id)
    path = _processor_file(task, model_id, src, local)
    if path is None:
        side = int(input_size or 384)
        log.warning("%s model %s has no preprocessor_config.json; using DPT's defaults (%d, bicubic, 0.5/0.5)",
                    task, model_id, side)
        return PreprocessSpec(side, side)
    raw = _read_json(path, "image processor config", model_id)  # a JSON error names the file
    legacy = legacy_processor_class(raw)
    try:
        with _quiet_transformers():
            if legacy is not None:
                import transformers

                proc = getattr(transformers, legacy).from_pretrained(src)
            else:
                proc = AutoImageProcessor.from_pretrained(src)
    except Exception as e:
        raise ModelLoadError(
            f"image processor config {path} of {task} model {model_id!r} cannot be loaded: "
            f"{type(e).__name__}: {error_reason(e, 200)}"
        ) from e
    return preprocess_spec(proc, input_size, str(path))


def weights_hash(module: nn.Module) -> str:
    """A stable hash of the weights (shapes + a strided sample of every tensor), cheap on big models, and of
    the model's config: the same weights under another config (relative vs metric Depth Anything, another
    ``max_depth``) are another graph. Where the checkpoint lives is not part of it."""
    h = hashlib.sha256()
    config = getattr(module, "config", None) or getattr(getattr(module, "model", None), "config", None)
    if config is not None:
        d = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
        h.update(json.dumps(d, sort_keys=True, default=str).encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _from_pretrained(task: Task, model_id: str, src: str, info: CheckpointInfo) -> nn.Module:
    import transformers

    cls = getattr(transformers, info.class_name)
    kwargs: dict[str, Any] = {"attn_implementation": "sdpa", "output_loading_info": True,
                              "ignore_mismatched_sizes": True}  # mismatches come back in the report, checked below
    if task == "segmentation":
        kwargs["use_auxiliary_head"] = False  # never computed at inference
    try:
        with _quiet_transformers():
            try:
                model, loading = cls.from_pretrained(src, **kwargs)
            except (ValueError, TypeError) as e:
                if "attn_implementation" not in str(e) and "sdpa" not in str(e).lower():
                    raise
                kwargs.pop("attn_implementation")
                model, loading = cls.from_pretrained(src, **kwargs)
    except OSError as e:
        raise ModelLoadError(f"cannot load {task} model {model_id!r}: {error_reason(e, 200)} ({_hub_hint(task)})") from e
    except Exception as e:  # truncated or corrupt weight files, configs the class cannot build
        raise ModelLoadError(
            f"cannot load the weights of {task} model {model_id!r} ({info.model_type}, {info.architecture}): "
            f"{type(e).__name__}: {error_reason(e, 200)} (a truncated or corrupt weight file? download it again)"
        ) from e
    check_loading_info(task, model_id, info, loading)
    return model  # type: ignore[no-any-return]


def load_model(task: Task, model_id: str, input_size: int | None = None, max_side: int | None = None
               ) -> LoadedModel:
    """Load a DPT-family checkpoint for ``task`` from a hub id or local directory (see the module's docstring).

    ``max_side`` (``engine.max_side``) bounds the longest side of a source before a processor that does not
    resize; it changes nothing for processors that resize. Every refusal is one :class:`ModelLoadError` line
    naming the model type found and what is supported.
    """
    from engines.memory import activations_per_pixel

    src, _ = _resolve(task, model_id)
    info = inspect_config(task, model_id, read_config(task, model_id))
    spec = load_processor_spec(task, model_id, input_size)
    if max_side:
        spec = replace(spec, max_side=int(max_side))
    model = _from_pretrained(task, model_id, src, info)
    model.eval()
    if task == "segmentation":
        id2label = {int(k): clean_label(v, int(k))
                    for k, v in (getattr(model.config, "id2label", None) or {}).items()}
        head: nn.Module = SegmentationHead(model)
    else:
        id2label = {}
        head = DepthHead(model)
    log.debug("loaded %s model %s: %s (%s)", task, model_id, info.architecture, info.class_name)
    return LoadedModel(
        task=task,
        model_id=model_id,
        module=head.eval(),
        preprocess=spec,
        labels=id2label,
        weights_hash=weights_hash(model),
        model_type=info.model_type,
        architecture=info.architecture,
        depth_kind=info.depth_kind,
        max_depth=info.max_depth,
        activations_per_pixel=activations_per_pixel(model.config, task),
    )
