"""The one small interface between the runtime (``pipeline``) and the inference backends.

``pipeline`` only sees :class:`Engine` and :func:`engines.create_engine`; it never imports a backend module.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: the config imports this module's constants without torch
    import torch

Task = Literal["segmentation", "depth"]
TASKS: tuple[Task, ...] = ("segmentation", "depth")
DEFAULT_MODELS: dict[Task, str] = {"segmentation": "Intel/dpt-large-ade", "depth": "Intel/dpt-large"}
OUTPUT_NAME: dict[Task, str] = {"segmentation": "logits", "depth": "depth"}
DepthKind = Literal["metric", "relative_inverse"]


class EngineError(Exception):
    """A problem with a model or backend, reported to the user as one line."""


class ModelLoadError(EngineError):
    """The model id / path cannot be loaded (unknown id, no hub access, not a DPT checkpoint)."""


class BackendUnavailable(EngineError):
    """The requested backend (e.g. TensorRT, CUDA) is not usable on this machine."""


class EngineUsageError(EngineError):
    """A setting the user can change makes the engine unusable (exit 2, like a bad flag)."""


class UnsupportedPrecision(EngineUsageError):
    """The requested precision cannot run here (e.g. BF16 on a CPU without it): a usage error (exit 2)."""


def _constrain_to_multiple_of(val: float, multiple: int) -> int:
    """transformers' DPT rounding (``get_resize_output_image_size``): nearest multiple, at least one."""
    x = round(val / multiple) * multiple
    if x < multiple:  # transformers' min_val=0 would allow 0: no network takes an empty side
        x = math.ceil(val / multiple) * multiple
    return max(int(x), 1)


@dataclass(frozen=True)
class PreprocessSpec:
    """How a checkpoint wants its input: from its ``preprocessor_config.json`` (DPT's image processor).

    ``height`` x ``width`` is the processor's ``size``. With ``keep_aspect_ratio`` the network input follows
    each source's aspect ratio (scaled as little as possible to reach one side of ``size``), every side rounded
    to ``ensure_multiple_of``; ``pad_multiple`` zero-pads the normalised input to multiples of it (``do_pad``
    with ``size_divisor``), centred. :meth:`network_shape` gives the input shape for one source resolution.
    """

    height: int
    width: int
    resample: Literal["bicubic", "bilinear", "nearest"] = "bicubic"
    rescale_factor: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    keep_aspect_ratio: bool = False
    ensure_multiple_of: int = 1
    do_resize: bool = True
    pad_multiple: int | None = None
    # engine.max_side: for a processor that does not resize, the longest side a source is resized to first
    # (aspect ratio kept, the processor's resample); None runs at the source's own size, as transformers does
    max_side: int | None = None

    @property
    def fixed_shape(self) -> tuple[int, int] | None:
        """The one network shape for every source, or ``None`` when it depends on the source's size."""
        if not self.do_resize or self.keep_aspect_ratio:
            return None
        return self._padded(self.resized_shape(self.height, self.width))

    def resized_shape(self, src_h: int, src_w: int) -> tuple[int, int]:
        """``(h, w)`` the source image is resized to (what transformers' DPT processor computes)."""
        if not self.do_resize:
            return self._within_max_side(src_h, src_w)
        scale_h, scale_w = self.height / src_h, self.width / src_w
        if self.keep_aspect_ratio:  # scale as little as possible
            if abs(1 - scale_w) < abs(1 - scale_h):
                scale_h = scale_w
            else:
                scale_w = scale_h
        m = max(1, int(self.ensure_multiple_of))
        return _constrain_to_multiple_of(scale_h * src_h, m), _constrain_to_multiple_of(scale_w * src_w, m)

    def _within_max_side(self, src_h: int, src_w: int) -> tuple[int, int]:
        if not self.max_side or max(src_h, src_w) <= self.max_side:
            return src_h, src_w
        scale = self.max_side / max(src_h, src_w)
        return max(1, round(src_h * scale)), max(1, round(src_w * scale))

    def padding(self, h: int, w: int) -> tuple[int, int, int, int]:
        """``(top, bottom, left, right)`` zero padding of a resized ``h x w`` input (centred, as transformers)."""
        if not self.pad_multiple:
            return 0, 0, 0, 0
        ph = math.ceil(h / self.pad_multiple) * self.pad_multiple - h
        pw = math.ceil(w / self.pad_multiple) * self.pad_multiple - w
        return ph // 2, ph - ph // 2, pw // 2, pw - pw // 2

    def _padded(self, hw: tuple[int, int]) -> tuple[int, int]:
        t, b, left, r = self.padding(*hw)
        return hw[0] + t + b, hw[1] + left + r

    def network_shape(self, src_h: int, src_w: int) -> tuple[int, int]:
        """``(h, w)`` of the network input for a ``src_h x src_w`` source (computed once per stream)."""
        return self._padded(self.resized_shape(src_h, src_w))

    def describe(self) -> str:
        """The network input in words, for the start-up log (``196x196``, or how it follows the source)."""
        pad = f", padded to multiples of {self.pad_multiple}" if self.pad_multiple else ""
        if not self.do_resize:
            bound = f"longest side at most {self.max_side}" if self.max_side else "not resized"
            return f"the source's size ({bound}{pad})"
        if self.keep_aspect_ratio:
            step = f" in multiples of {self.ensure_multiple_of}" if self.ensure_multiple_of > 1 else ""
            return f"{self.width}x{self.height} with the source's aspect ratio{step}{pad}"
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class EngineSpec:
    """What a caller needs to know about a loaded engine."""

    task: Task
    model_id: str
    backend: str  # e.g. "openvino-cpu-bf16", "torch-cpu-fp32", "torch-cuda-fp16-graphs", "tensorrt-fp16"
    device: str  # "cpu" or "cuda[:N]"
    dtype: torch.dtype
    preprocess: PreprocessSpec
    labels: dict[int, str] = field(default_factory=dict)
    max_batch: int = 8
    activations_per_pixel: float = 0.0  # floats held per network-input pixel per frame (engines.memory)
    model_type: str = "dpt"  # config.json's model_type: "dpt" or "depth_anything"
    architecture: str = ""  # e.g. "DPT (ViT)", "DPT (DINOv2 backbone)", "Depth Anything (metric, max 20 m)"
    depth_kind: DepthKind | None = None  # depth engines: "metric" (metres) or "relative_inverse"; else None

    @property
    def precision(self) -> str:
        """The precision the network computes in ("fp32", "fp16", "bf16"), as the backend name says it."""
        parts = self.backend.split("-")
        return next((p for p in ("bf16", "fp16", "fp32") if p in parts), str(self.dtype).removeprefix("torch."))

    @property
    def metric(self) -> bool:
        """Whether the depth output is in metres (a metric checkpoint)."""
        return self.depth_kind == "metric"

    def network_shape(self, src_h: int, src_w: int) -> tuple[int, int]:
        """``(h, w)`` of this engine's network input for a ``src_h x src_w`` source."""
        return self.preprocess.network_shape(src_h, src_w)


@runtime_checkable
class Engine(Protocol):
    """An engine takes a batch ``N x 3 x H x W`` on ``spec.device`` in ``spec.dtype`` and returns named outputs.

    Segmentation engines return ``{"logits": N x C x h x w}``; depth engines ``{"depth": N x h x w}``,
    on ``spec.device``, in the engine's compute dtype (float32 on CPU; float16/bfloat16 for torch on CUDA:
    the consumer resizes first and upcasts only what it keeps). ``infer`` may be called from one thread at a
    time. Backends subclass this class, so they inherit the default of every optional hook.
    """

    spec: EngineSpec

    def infer(self, batch: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def warmup(self, shapes: Iterable[tuple[int, int]] | None = None) -> None:
        """The first-run work (CUDA graph capture, algorithm selection, lazy kernel loading), called before any
        frame flows: for the engine's own shape, or for each network shape in ``shapes`` (``(h, w)``, engines
        whose shape follows the source). Nothing to do by default."""
        return None

    def close(self) -> None: ...


@dataclass(frozen=True)
class EngineConfig:
    """Everything the factory needs; built by the pipeline from its validated config."""

    task: Task
    model: str
    backend: Literal["auto", "tensorrt", "openvino", "torch"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    max_batch: int = 8
    cuda_graphs: bool = True
    compile: bool = False
    cache_dir: str = "~/.cache/dptstream"
    input_size: int | None = None  # override the checkpoint's square input side
    max_side: int | None = None  # resize larger sources to this longest side before a non-resizing processor
    threads: int | None = None
    # TensorRT FP16: the attention Softmax in float32 (Casts around it) or, False, in FP16 (no Casts: lets
    # TensorRT fuse the attention block where the Casts prevent it; see engines.tensorrt_engine.attention_report)
    fp32_softmax: bool = True


def error_reason(e: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type's name when it has none), cut to ``limit`` characters:
    the one line a user is shown (transformers' and OpenVINO's messages can be pages long)."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    if limit is not None and len(line) > limit:
        line = line[: limit - 3].rstrip() + "..."
    return line
