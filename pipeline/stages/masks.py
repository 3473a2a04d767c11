"""Logits -> class mask: the published mask size, resize + argmax, the uint8/uint16 mask, class histograms and
fractions. Pure tensor functions that run on the tensors' device."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.frames import MAX_CLASSES, MAX_UINT8_CLASSES


def mask_size(spec: str, src_w: int, src_h: int, net: int | tuple[int, int]) -> tuple[int, int]:
    """``(w, h)`` of the published mask for ``--mask-size``.

    ``net`` is the network input of this source: its ``(h, w)`` (one shape per source resolution when the
    checkpoint keeps the aspect ratio), or one side for a square network. Default: the source's aspect ratio
    with the long side equal to the network's long side; ``network``: the network's own grid.
    """
    net_h, net_w = (net, net) if isinstance(net, int) else (int(net[0]), int(net[1]))
    if spec == "source":
        return src_w, src_h
    if spec == "network":
        return net_w, net_h
    if spec == "default":
        side = max(net_h, net_w)
        if src_w >= src_h:
            return side, max(1, round(src_h * side / src_w))
        return max(1, round(src_w * side / src_h)), side
    w, h = spec.split("x")
    return int(w), int(h)


def segment(logits: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """``C x h x w`` logits -> ``H x W`` class ids: bilinear resize of the logits, then argmax.

    uint8 for up to 256 classes; int32 for more (never wrapped; :func:`mask_array` makes it the published
    uint16).

    The same computation as transformers' ``post_process_semantic_segmentation(target_sizes=[size])``.
    On CPU the logits are kept channels-last (DPT's head already emits them so), where both the resize and
    a per-pixel argmax over contiguous class scores are several times faster than over ``C x H x W``.
    """
    cpu = logits.device.type == "cpu"
    if cpu:
        # batch dim added through the HWC view, so the strides read as channels-last (a plain unsqueeze gives
        # an ambiguous batch stride: interpolate then returns C x H x W and the argmax runs ~6x slower)
        x = logits.float().permute(1, 2, 0).unsqueeze(0).permute(0, 3, 1, 2)
        x = x.contiguous(memory_format=torch.channels_last)
    else:
        # FP16 logits are resized in FP16 (CUDA's bilinear kernel accumulates in float32) and argmaxed as they
        # come: no full-resolution FP32 copy. BF16's 8-bit mantissa makes ties of near-equal classes common
        # after rounding, so BF16 logits are upcast first (one frame's, freed at once).
        x = logits.unsqueeze(0)
        if x.dtype not in (torch.float16, torch.float32):
            x = x.float()
    if tuple(x.shape[-2:]) != tuple(size_hw):
        x = F.interpolate(x, size=size_hw, mode="bilinear", align_corners=False)
    wide = logits.shape[0] > MAX_UINT8_CLASSES
    if cpu:
        hwc = x[0].permute(1, 2, 0)
        if hwc.is_contiguous():
            return torch.from_numpy(hwc.numpy().argmax(axis=-1).astype(np.int32 if wide else np.uint8))
    return x[0].argmax(dim=0).to(torch.int32 if wide else torch.uint8)


def mask_array(mask: torch.Tensor) -> np.ndarray:
    """A host mask tensor -> the published array: uint8 as is, wider ids as uint16 (at most 65536 classes).

    A class id past 65535 raises ``ValueError`` rather than wrap (such checkpoints are refused at load)."""
    a = mask.cpu().numpy()
    if a.dtype == np.uint8:
        return a
    if a.size and (int(a.max()) >= MAX_CLASSES or int(a.min()) < 0):
        raise ValueError(f"class id {int(a.max())} does not fit a 16-bit mask (at most {MAX_CLASSES} classes)")
    return a.astype(np.uint16)


def histogram(keys: torch.Tensor, length: int) -> torch.Tensor:
    """Counts of each value ``0 .. length-1`` in ``keys`` (int64, exactly ``length`` long for keys < length).

    On CUDA a scatter-add: ``torch.bincount`` there reads the maximum back to the host (a synchronisation).
    """
    flat = keys.reshape(-1).long()
    if flat.is_cuda:
        out = torch.zeros(length, dtype=torch.int64, device=flat.device)
        return out.scatter_add_(0, flat, torch.ones_like(flat))
    return torch.bincount(flat, minlength=length)


def class_counts(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    return histogram(mask, num_classes)


def class_fractions(mask: torch.Tensor, num_classes: int, counts: torch.Tensor | None = None) -> dict[int, float]:
    c = (counts if counts is not None else class_counts(mask, num_classes)).cpu().numpy()
    total = float(mask.numel())
    return {int(k): round(float(c[k]) / total, 6) for k in np.nonzero(c)[0]}
