"""Small random-weight checkpoints of every supported DPT-family architecture, for tests, demos and benchmarks.

Each is saved with ``save_pretrained`` together with an image processor configured like the real checkpoint's
(``keep_aspect_ratio``, ``ensure_multiple_of``, mean/std, padding), so it loads through the same path as a hub
id. Depth heads end in a ReLU (or a sigmoid for metric Depth Anything): with random weights their output is
mostly zeros on real frames, so the last convolution is rescaled on a real frame until its output spreads
(weight /= std, bias = (bias - mean) / std + 1.5) and depth comparisons mean something.

The real checkpoints these stand for (not loaded here: no model hub on these machines) are listed in
:data:`FAMILIES`; the processor settings are modelled on their published processor configs and conversion
scripts, at smaller sizes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass(frozen=True)
class Family:
    name: str
    task: str  # "depth" or "segmentation"
    stands_for: str  # the real hub checkpoint it imitates
    metric: bool = False


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("dpt", "depth", "Intel/dpt-large"),
    Family("dpt-seg", "segmentation", "Intel/dpt-large-ade"),
    Family("dpt-hybrid", "depth", "Intel/dpt-hybrid-midas"),
    Family("dpt-hybrid-seg", "segmentation", "a DPT-Hybrid ADE20K checkpoint"),
    Family("dpt-beit", "depth", "Intel/dpt-beit-large-512"),
    Family("dpt-swinv2", "depth", "Intel/dpt-swinv2-tiny-256"),
    Family("dpt-dinov2", "depth", "facebook/dpt-dinov2-small-kitti"),
    Family("depth-anything-v1", "depth", "LiheYoung/depth-anything-small-hf"),
    Family("depth-anything-v2", "depth", "depth-anything/Depth-Anything-V2-Small-hf"),
    Family("depth-anything-v2-metric", "depth", "depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf",
           metric=True),
)}
DEPTH_FAMILIES = tuple(n for n, f in FAMILIES.items() if f.task == "depth")


def _vit(size: int, patch: int = 16) -> dict[str, Any]:
    return dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                image_size=size, patch_size=patch)


def _backbone_stages() -> dict[str, Any]:
    return dict(out_features=["stage1", "stage2", "stage3", "stage4"])


def _dpt_neck(**extra: Any) -> dict[str, Any]:
    return dict(neck_hidden_sizes=[16, 32, 64, 64], fusion_hidden_size=32, initializer_range=0.1,
                reassemble_factors=[4, 2, 1, 0.5], **extra)


def _processor(size: int, mean: list[float], std: list[float], **extra: Any) -> Any:
    try:  # transformers 5: the PIL processor directly (no torchvision fallback warning)
        from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil as DPTImageProcessor
    except ImportError:
        from transformers import DPTImageProcessor  # type: ignore[assignment]
    return DPTImageProcessor(size={"height": size, "width": size}, resample=3, do_normalize=True,
                             image_mean=mean, image_std=std, **extra)


def _build(family: str, size: int | None, large: bool) -> tuple[Any, Any]:
    """``(model, image processor)`` for ``family`` at network side ``size``."""
    import transformers

    from engines.labels import ADE20K_LABELS

    tf: Any = transformers  # configs built from keyword dicts: untyped on purpose

    seg_labels = dict(enumerate(ADE20K_LABELS))
    seg_kw = dict(num_labels=150, id2label=seg_labels, label2id={v: k for k, v in seg_labels.items()},
                  use_auxiliary_head=True)
    if family in ("dpt", "dpt-seg"):
        s = size or 192
        cfg = tf.DPTConfig(**_vit(s), backbone_out_indices=[0, 1, 2, 3], **_dpt_neck(),
                           **(seg_kw if family == "dpt-seg" else {}))
        cls = tf.DPTForSemanticSegmentation if family == "dpt-seg" else tf.DPTForDepthEstimation
        return cls(cfg), _processor(s, [0.5] * 3, [0.5] * 3)
    if family in ("dpt-hybrid", "dpt-hybrid-seg"):
        s = size or 192
        bit = tf.BitConfig(global_padding="same", layer_type="bottleneck", depths=[1, 1, 1],
                           hidden_sizes=[128, 128, 256], out_features=["stage1", "stage2", "stage3"],
                           embedding_dynamic_padding=True)
        cfg = tf.DPTConfig(**_vit(s), is_hybrid=True, backbone_config=bit, backbone_out_indices=[0, 1, 2, 3],
                           backbone_featmap_shape=[1, 256, s // 16, s // 16],
                           **_dpt_neck() | {"neck_hidden_sizes": [128, 128, 64, 64]},
                           **(seg_kw if family == "dpt-hybrid-seg" else {}))
        cls = tf.DPTForSemanticSegmentation if family == "dpt-hybrid-seg" else tf.DPTForDepthEstimation
        # Intel/dpt-hybrid-midas: a square input (its hybrid embeddings take image_size only)
        return cls(cfg), _processor(s, [0.5] * 3, [0.5] * 3)
    if family == "dpt-beit":
        s = size or 192
        beit = tf.BeitConfig(**_vit(s), use_relative_position_bias=True, reshape_hidden_states=False,
                             **_backbone_stages())
        cfg = tf.DPTConfig(backbone_config=beit, image_size=s, **_dpt_neck())
        # MiDaS 3.1 BEiT-512: aspect ratio kept, sides multiples of 32
        return tf.DPTForDepthEstimation(cfg), _processor(s, [0.5] * 3, [0.5] * 3, keep_aspect_ratio=True,
                                                         ensure_multiple_of=32)
    if family == "dpt-swinv2":
        s = size or 192
        swin = tf.Swinv2Config(image_size=s, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                               num_heads=[1, 2, 2, 4], window_size=4, **_backbone_stages())
        cfg = tf.DPTConfig(backbone_config=swin, image_size=s,
                           **_dpt_neck() | {"neck_hidden_sizes": [16, 32, 64, 128],
                                            "reassemble_factors": [1, 1, 1, 1]})
        return tf.DPTForDepthEstimation(cfg), _processor(s, [0.5] * 3, [0.5] * 3)
    if family == "dpt-dinov2":
        s = size or 196
        dino = tf.Dinov2Config(**_vit(s, patch=14), reshape_hidden_states=False, **_backbone_stages())
        cfg = tf.DPTConfig(backbone_config=dino, image_size=s, **_dpt_neck())
        # facebook/dpt-dinov2-*: ImageNet mean/std, zero padding to multiples of the patch (size_divisor 14)
        return tf.DPTForDepthEstimation(cfg), _processor(s, IMAGENET_MEAN, IMAGENET_STD, keep_aspect_ratio=True,
                                                         do_pad=True, size_divisor=14)
    if family.startswith("depth-anything"):
        s = size or (518 if large else 98)
        if large:  # Depth-Anything-V2-Large: ViT-L/14 DINOv2, neck [256, 512, 1024, 1024], fusion 256
            dino = tf.Dinov2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                   intermediate_size=4096, image_size=518, patch_size=14,
                                   out_indices=[5, 12, 18, 24], reshape_hidden_states=False)
            neck = dict(neck_hidden_sizes=[256, 512, 1024, 1024], fusion_hidden_size=256, head_hidden_size=32,
                        reassemble_hidden_size=1024, initializer_range=0.02)
        else:
            dino = tf.Dinov2Config(**_vit(s, patch=14), reshape_hidden_states=False, **_backbone_stages())
            neck = dict(neck_hidden_sizes=[16, 32, 64, 64], fusion_hidden_size=32, head_hidden_size=16,
                        reassemble_hidden_size=64, initializer_range=0.1)
        extra: dict[str, Any] = {}
        if family == "depth-anything-v2-metric":
            extra = dict(depth_estimation_type="metric", max_depth=20)  # Metric-Indoor: up to 20 m
        cfg = tf.DepthAnythingConfig(backbone_config=dino, **neck, **extra)
        proc = _processor(s, IMAGENET_MEAN, IMAGENET_STD, keep_aspect_ratio=True, ensure_multiple_of=14)
        return tf.DepthAnythingForDepthEstimation(cfg), proc
    raise ValueError(f"unknown checkpoint family {family!r} (one of {', '.join(FAMILIES)})")


def _last_conv(model: Any) -> Any:
    from torch import nn

    convs = [m for m in model.head.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1]


def spread_depth_head(model: Any, proc: Any, frame: np.ndarray) -> None:
    """Rescale the depth head's last convolution so its output on ``frame`` is ~N(1.5, 1) before the final
    activation: a random ReLU head otherwise outputs mostly exact zeros."""
    import torch

    conv = _last_conv(model)
    seen: list[torch.Tensor] = []
    hook = conv.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    try:
        with torch.no_grad():
            model(**proc(images=frame, return_tensors="pt"))
    finally:
        hook.remove()
    out = seen[-1]
    mean, std = float(out.mean()), float(out.std()) or 1.0
    with torch.no_grad():
        conv.weight /= std
        if conv.bias is not None:
            conv.bias.copy_((conv.bias - mean) / std + 1.5)


def make_family_checkpoint(path: str | Path, family: str, image_size: int | None = None, seed: int = 0,
                           large: bool = False) -> Path:
    """Save a random-weight checkpoint of ``family`` (see :data:`FAMILIES`) with its image processor.

    ``large=True`` (Depth Anything only): the Depth-Anything-V2-Large architecture (ViT-L/14 at 518).
    """
    import torch
    from transformers.utils import logging as hf_logging

    from pipeline.sample import make_frames

    if family not in FAMILIES:
        raise ValueError(f"unknown checkpoint family {family!r} (one of {', '.join(FAMILIES)})")
    if large and not family.startswith("depth-anything"):
        raise ValueError("large=True is for the Depth Anything families (DPT-Large: pipeline.sample)")
    hf_logging.disable_progress_bar()
    path = Path(path)
    torch.manual_seed(seed)
    model, proc = _build(family, image_size, large)
    model.eval()
    if large:  # random init at 0.02 fades over 24 layers; scale the matrices up as DPT-Large's sample does
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(2.0)
    if FAMILIES[family].task == "depth":
        spread_depth_head(model, proc, make_frames(1, 1280, 720, seed=seed)[0].copy())
    model.save_pretrained(path)
    proc.save_pretrained(path)
    if family == "depth-anything-v1":  # V1 configs predate depth_estimation_type and max_depth
        cfg_path = path / "config.json"
        cfg = json.loads(cfg_path.read_text())
        for key in ("depth_estimation_type", "max_depth"):
            cfg.pop(key, None)
        cfg_path.write_text(json.dumps(cfg, indent=2))
    (path / "dptstream-sample.json").write_text(json.dumps({
        "random_weights": True, "task": FAMILIES[family].task, "family": family, "large": large,
        "stands_for": FAMILIES[family].stands_for,
    }))
    return path


# ---- checkpoints that must be refused (tests of the one-line errors) ----

def make_glpn_checkpoint(path: str | Path) -> Path:
    """A tiny GLPN depth checkpoint (another depth architecture, not DPT)."""
    import transformers

    tf: Any = transformers
    path = Path(path)
    cfg = tf.GLPNConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                        patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 1], mlp_ratios=[2, 2],
                        decoder_hidden_size=16)
    tf.GLPNForDepthEstimation(cfg).save_pretrained(path)
    return path


def make_vit_classifier_checkpoint(path: str | Path) -> Path:
    """A tiny ViT image classifier (not a dense-prediction model at all)."""
    import transformers

    tf: Any = transformers
    path = Path(path)
    cfg = tf.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=16, num_labels=3)
    tf.ViTForImageClassification(cfg).save_pretrained(path)
    tf.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def truncate_weights(path: str | Path) -> Path:
    """Cut a checkpoint's ``model.safetensors`` in half (an interrupted download)."""
    f = Path(path) / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    return Path(path)


def rename_weight_key(path: str | Path, index: int = 5) -> str:
    """Rename one key of a checkpoint's ``model.safetensors``; returns the original key name."""
    from safetensors.torch import load_file, save_file

    f = Path(path) / "model.safetensors"
    tensors = load_file(str(f))
    key = sorted(tensors)[index]
    tensors[key + "_renamed"] = tensors.pop(key)
    save_file(tensors, str(f), metadata={"format": "pt"})
    return key


# ---- realistic-size random checkpoints for CPU benchmarks ----

REALISTIC: dict[str, str] = {
    "depth-anything-v2-small": "depth-anything/Depth-Anything-V2-Small-hf",
    "dpt-base-ade": "a DPT-Base (ViT-B/16) ADE20K checkpoint at 384",
}


def make_realistic_checkpoint(path: str | Path, which: str, seed: int = 0) -> Path:
    """Random weights of a real architecture at its real size (speed measurements; outputs mean nothing):
    ``depth-anything-v2-small`` (DINOv2 ViT-S/14 at 518, the source's aspect kept) or ``dpt-base-ade``
    (ViT-B/16 DPT at 384, 150 ADE20K classes)."""
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    from engines.labels import ADE20K_LABELS

    tf: Any = transformers
    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    if which == "depth-anything-v2-small":
        dino = tf.Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                               image_size=518, patch_size=14, out_indices=[3, 6, 9, 12], reshape_hidden_states=False)
        cfg = tf.DepthAnythingConfig(backbone_config=dino, neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64,
                                     head_hidden_size=32, reassemble_hidden_size=384)
        model: Any = tf.DepthAnythingForDepthEstimation(cfg)
        proc = _processor(518, IMAGENET_MEAN, IMAGENET_STD, keep_aspect_ratio=True, ensure_multiple_of=14)
        task = "depth"
    elif which == "dpt-base-ade":
        labels = dict(enumerate(ADE20K_LABELS))
        cfg = tf.DPTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                           image_size=384, patch_size=16, backbone_out_indices=[2, 5, 8, 11],
                           neck_hidden_sizes=[96, 192, 384, 768], fusion_hidden_size=256, num_labels=150,
                           id2label=labels, label2id={v: k for k, v in labels.items()}, use_auxiliary_head=False)
        model = tf.DPTForSemanticSegmentation(cfg)
        proc = _processor(384, [0.5] * 3, [0.5] * 3)
        task = "segmentation"
    else:
        raise ValueError(f"unknown realistic checkpoint {which!r} (one of {', '.join(REALISTIC)})")
    path = Path(path)
    model.eval().save_pretrained(path)
    proc.save_pretrained(path)
    (path / "dptstream-sample.json").write_text(json.dumps({
        "random_weights": True, "task": task, "family": which, "stands_for": REALISTIC[which]}))
    return path
