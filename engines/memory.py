"""How much memory a network input shape needs, and whether the device has it.

A checkpoint whose processor does not resize (``facebook/dpt-dinov2-*``: ``do_resize`` false, padding to
multiples of 14) runs at the source's own size, so a 4K camera asks for a network input of 3850x2170. The
estimate here lets the runtime refuse such a shape in one line before it is tried, instead of the machine
running out of memory in the middle of a run.

The estimate is rough and errs high: it counts the values the DPT neck and head hold per input pixel (their
full- and half-resolution feature maps) and the backbone's tokens, for a whole batch. Measured on the tiny
DINOv2-DPT checkpoint (``fusion_hidden_size`` 32) on CPU: 360-560 bytes per pixel and frame at 364x644 to
1456x2576; estimated 660.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from engines.base import EngineError, EngineSpec, Task

HEAD_CHANNELS = 32  # the DPT depth head's last hidden convolution, at full resolution


def activations_per_pixel(config: Any, task: Task) -> float:
    """Values (floats) held at once per network-input pixel during one frame's forward pass (see module)."""
    fusion = int(getattr(config, "fusion_hidden_size", None) or 256)
    backbone = getattr(config, "backbone_config", None)
    hidden = int(getattr(backbone, "hidden_size", None) or getattr(config, "hidden_size", None) or 768)
    patch = int(getattr(backbone, "patch_size", None) or getattr(config, "patch_size", None) or 16)
    per_pixel = 2 * fusion + 3 * HEAD_CHANNELS + 16 * hidden / (patch * patch)
    if task == "segmentation":
        per_pixel += int(getattr(config, "num_labels", None) or 150)
    return float(per_pixel)


def estimated_bytes(spec: EngineSpec, shape: tuple[int, int], batch: int | None = None) -> int:
    """Bytes of activations for a batch (default: the engine's largest) at network input ``shape``."""
    n = batch if batch is not None else spec.max_batch
    itemsize = torch.empty((), dtype=spec.dtype).element_size()
    return int(spec.activations_per_pixel * shape[0] * shape[1] * n * itemsize)


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup v2 memory limit (a container's), or None without a limit."""
    base = Path("/sys/fs/cgroup")
    try:
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(int(limit) - int((base / "memory.current").read_text().strip()), 0)
    except (OSError, ValueError):
        return None


def available_bytes(device: str) -> int | None:
    """Memory a forward pass can still take: free device memory on CUDA; on CPU the kernel's MemAvailable (or
    the container's limit, if lower). None when it cannot be read (then nothing is refused)."""
    if device.startswith("cuda"):
        try:
            free, _total = torch.cuda.mem_get_info(torch.device(device))
        except (RuntimeError, AssertionError):
            return None
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = dict(line.split(":", 1) for line in f if ":" in line)
        avail = int(info["MemAvailable"].strip().split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    room = _cgroup_room()
    return min(avail, room) if room is not None else avail


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_network_shape(spec: EngineSpec, shape: tuple[int, int], source: str,
                        available: int | None = None) -> int:
    """The estimate for ``shape``; an :class:`EngineError` (one line naming the shape, the estimate and the way
    out) when it exceeds the memory the engine's device has. ``source`` names what asked for the shape."""
    need = estimated_bytes(spec, shape)
    room = available if available is not None else available_bytes(spec.device)
    if room is not None and need > room:
        where = "available RAM" if spec.device == "cpu" else f"free memory on {spec.device}"
        side = max(256, 14 * math.floor(max(shape) * math.sqrt(room / need) / 14 * 0.8))
        raise EngineError(
            f"{source}: {spec.task} network input {shape[1]}x{shape[0]} needs an estimated {gib(need)} for a batch "
            f"of {spec.max_batch}, more than the {gib(room)} of {where}; set engine.max_side (--max-side "
            f"{side}) to resize frames before the processor, or lower engine.batch_size")
    return need
