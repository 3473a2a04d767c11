"""Generated sample inputs: real-content H.264 clips and small random-weight DPT checkpoints.

Used by the README's first command, the tests and the benchmarks, so nothing needs the model hub.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

TINY_INPUT = 192  # network side of the tiny checkpoints (the real ones use 480 / 384)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def _photo(name: str) -> np.ndarray:
    import skimage.data

    im = getattr(skimage.data, name)()
    if im.ndim == 2:
        im = np.stack([im] * 3, axis=-1)
    return np.ascontiguousarray(im[..., :3])


def make_frames(n: int, width: int, height: int, seed: int = 0, photo: str | None = None) -> list[np.ndarray]:
    """``n`` RGB frames panning and zooming across a real photograph (content changes every frame)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    name = photo or PHOTOS[seed % len(PHOTOS)]
    src = Image.fromarray(_photo(name))
    # upscale so that a window of the output's aspect ratio always fits
    scale = max(width / src.width, height / src.height) * 1.6
    big = src.resize((int(src.width * scale) + 1, int(src.height * scale) + 1), Image.Resampling.BICUBIC)
    frames = []
    x0, y0 = rng.uniform(0, 0.2), rng.uniform(0, 0.2)
    for i in range(n):
        t = i / max(1, n - 1)
        zoom = 1.0 + 0.35 * np.sin(np.pi * t)  # zoom in, then out
        cw, ch = big.width / 1.6 / zoom, big.height / 1.6 / zoom
        cw, ch = min(cw, big.width), min(ch, big.height)
        cx = (x0 + 0.6 * t) * (big.width - cw)
        cy = (y0 + 0.4 * t) * (big.height - ch)
        box = (cx, cy, cx + cw, cy + ch)
        frames.append(np.asarray(big.resize((width, height), Image.Resampling.BILINEAR, box=box)))
    return frames


def make_clip(path: str | Path, frames: int = 48, width: int = 1280, height: int = 720, fps: int = 24,
              seed: int = 0, photo: str | None = None) -> Path:
    """Encode a real-content H.264 clip with PyAV (MP4 with the index up front; container from the suffix)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opts = {"movflags": "faststart"} if path.suffix.lower() in (".mp4", ".mov") else {}
    with av.open(str(path), "w", options=opts) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        stream.options = {"crf": "20", "preset": "veryfast", "g": str(fps)}
        for img in make_frames(frames, width, height, seed=seed, photo=photo):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def tiny_config_kwargs(image_size: int) -> dict[str, Any]:
    return dict(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
        image_size=image_size, patch_size=16, neck_hidden_sizes=[16, 32, 64, 64], fusion_hidden_size=32,
        backbone_out_indices=[0, 1, 2, 3], initializer_range=0.1, reassemble_factors=[4, 2, 1, 0.5],
    )


def make_checkpoint(path: str | Path, task: str, image_size: int | None = None, seed: int = 0,
                    large: bool = False, num_labels: int = 150) -> Path:
    """Save a random-weight DPT checkpoint with a ``preprocessor_config.json``.

    ``large=False``: a tiny model (same architecture, small sizes) for tests and the CPU demo.
    ``large=True``: the real DPT-Large architecture (ViT-L/16, 24 layers) with random weights.
    ``num_labels``: segmentation classes (ADE20K's 150 names, then ``class_N``).
    """
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTForSemanticSegmentation
    try:  # transformers 5: the PIL processor directly (no torchvision fallback warning)
        from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil as DPTImageProcessor
    except ImportError:
        from transformers import DPTImageProcessor  # type: ignore[assignment]
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    path = Path(path)
    size = image_size or ((480 if task == "segmentation" else 384) if large else TINY_INPUT)
    if large:
        kw: dict[str, Any] = dict(
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
            image_size=size, neck_hidden_sizes=[256, 512, 1024, 1024], backbone_out_indices=[5, 11, 17, 23],
            initializer_range=0.02,
        )
    else:
        kw = tiny_config_kwargs(size)
    torch.manual_seed(seed)
    if task == "segmentation":
        from engines.labels import ADE20K_LABELS

        names = [*ADE20K_LABELS, *(f"class_{i}" for i in range(len(ADE20K_LABELS), num_labels))][:num_labels]
        id2label = dict(enumerate(names))
        kw.update(num_labels=num_labels, id2label=id2label, label2id={v: k for k, v in id2label.items()},
                  use_auxiliary_head=True)
        config = DPTConfig(**kw)
        model: Any = DPTForSemanticSegmentation(config)
    elif task == "depth":
        model = DPTForDepthEstimation(DPTConfig(**kw))
    else:
        raise ValueError(f"unknown task {task!r}")
    if large:  # random init at 0.02 gives ~1e-7 outputs after many layers; rescale the heads
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(2.0)
    model.save_pretrained(path)
    DPTImageProcessor(size={"height": size, "width": size}, resample=3, do_normalize=True,
                      image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(path)
    (path / "dptstream-sample.json").write_text(json.dumps({"random_weights": True, "task": task,
                                                            "large": large}))
    return path


def make_sample(out_dir: str | Path, frames: int = 48, width: int = 1280, height: int = 720) -> dict[str, Path]:
    """The README's demo inputs: one clip and both tiny checkpoints (cached: reused when present)."""
    out = Path(out_dir)
    clip = out / "sample.mp4"
    seg = out / "dpt-tiny-ade"
    depth = out / "dpt-tiny-depth"
    if not clip.exists():
        make_clip(clip, frames=frames, width=width, height=height)
    if not (seg / "config.json").exists():
        make_checkpoint(seg, "segmentation")
    if not (depth / "config.json").exists():
        make_checkpoint(depth, "depth")
    return {"clip": clip, "segmentation": seg, "depth": depth}
