"""The naive baseline: decode -> transformers processor -> model -> transformers post-processing, frame by frame."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pipeline.benchmark.engine import decode_frames
from pipeline.benchmark.timing import Timer


# -- naive transformers loop --------------------------------------------------------------------------------
def run_naive(models: dict[str, str], clip: Path, device: str, limit: int, net_side: int,
              precision: str = "fp32") -> Timer:
    """decode -> DPTImageProcessor -> model -> post_process_* per frame, sequentially (masks to host).

    ``precision`` fp16 (CUDA): the model in half precision and its input cast to half, as a user would write
    it (``model.half()``), so the pipeline's FP16 engines are compared with an FP16 loop too."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation, AutoModelForSemanticSegmentation
    from transformers.utils import logging as hf_logging

    from pipeline.stages.masks import mask_size

    dev = torch.device(device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    procs: dict[str, Any] = {}
    nets: dict[str, Any] = {}
    hf_logging.disable_progress_bar()
    try:
        for task, path in models.items():
            procs[task] = AutoImageProcessor.from_pretrained(path)
            # the Auto classes: the checkpoint's own class (Depth Anything is not a DPTForDepthEstimation)
            cls: Any = AutoModelForSemanticSegmentation if task == "segmentation" else AutoModelForDepthEstimation
            nets[task] = cls.from_pretrained(path).to(dev, dtype).eval()
    finally:
        hf_logging.enable_progress_bar()
    # one processor call when both checkpoints want the same preprocessing (a fair, not a strawman, loop)
    shared = len(procs) > 1 and len({json.dumps(p.to_dict(), sort_keys=True, default=str)
                                     for p in procs.values()}) == 1
    frames = decode_frames(clip, limit)
    timer = Timer(device)

    def one() -> int:
        try:
            image = next(frames)
        except StopIteration:
            return 0
        h, w = image.shape[:2]
        mw, mh = mask_size("default", w, h, net_side)
        cache: dict[str, Any] = {}
        with torch.inference_mode():
            for task, net in nets.items():
                key = "shared" if shared else task
                if key not in cache:
                    cache[key] = procs[task](images=image, return_tensors="pt").to(dev)
                    if dtype != torch.float32:
                        cache[key]["pixel_values"] = cache[key]["pixel_values"].to(dtype)
                out = net(**cache[key])
                if task == "segmentation":
                    procs[task].post_process_semantic_segmentation(out, target_sizes=[(mh, mw)])[0].cpu()
                else:
                    procs[task].post_process_depth_estimation(
                        out, target_sizes=[(mh, mw)])[0]["predicted_depth"].cpu()
        return 1

    # warm-up on the first frame (not counted), then every following frame once
    one()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    c_start = time.process_time()
    t_start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        n = one()
        if not n:
            break
        timer.frames += n
        timer.calls.append(time.perf_counter() - t0)
    timer.seconds = time.perf_counter() - t_start
    timer.cpu_seconds = time.process_time() - c_start
    return timer
