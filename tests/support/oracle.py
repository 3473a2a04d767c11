"""The transformers oracle: processor + model + post-processing, frame by frame, on the same decoded frames."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import torch


def decode_rgb(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


class Oracle:
    def __init__(self, seg_dir: Path, depth_dir: Path) -> None:
        from transformers import AutoImageProcessor, DPTForDepthEstimation, DPTForSemanticSegmentation

        self.proc = AutoImageProcessor.from_pretrained(seg_dir)
        self.dproc = AutoImageProcessor.from_pretrained(depth_dir)
        self.seg = DPTForSemanticSegmentation.from_pretrained(seg_dir).eval()
        self.depth = DPTForDepthEstimation.from_pretrained(depth_dir).eval()

    @torch.inference_mode()
    def mask(self, image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
        inputs = self.proc(images=image, return_tensors="pt")
        out = self.seg(**inputs)
        m = self.proc.post_process_semantic_segmentation(out, target_sizes=[size_hw])[0]
        return m.numpy().astype(np.uint8)

    @torch.inference_mode()
    def depth_map(self, image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
        inputs = self.dproc(images=image, return_tensors="pt")
        out = self.depth(**inputs)
        d = self.dproc.post_process_depth_estimation(out, target_sizes=[size_hw])[0]["predicted_depth"]
        return d.numpy()
