"""Export a loaded DPT model to ONNX, in FP32 or as a mixed-precision FP16 graph for TensorRT.

The graph takes ``pixel_values`` (``N x 3 x H x W`` float32, dynamic batch, fixed ``H, W``: one graph per network
shape, the checkpoint's one square shape or, for checkpoints that keep the aspect ratio, the shape of a source
resolution, :meth:`engines.base.PreprocessSpec.network_shape`) and returns ``logits`` (``N x C x h x w``) or ``depth`` (``N x h x w``), float32.
The argmax is not in the graph (masks are resized first, then argmaxed, by the pipeline).

FP16 graphs are exported from a half-precision copy of the model, not converted after the fact
(``onnxconverter_common``'s converter produces graphs that do not load for DPT). Their inputs and outputs
stay float32 (a ``Cast`` at each end), and the numerically fragile ops stay float32 inside:

- LayerNorm / GroupNorm: their statistics over hundreds of channels lose digits in FP16;
- attention Softmax: computed on float32 scores, cast back to FP16 for the second matrix product.

TensorRT builds such a graph as a strongly typed network: the precision of every op is what the graph says.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from engines.base import OUTPUT_NAME, EngineError
from engines.cache import atomic_path, cache_root
from engines.loading import LoadedModel

log = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16"]
INPUT_NAME = "pixel_values"
DEFAULT_OPSET = 17
# Bump when the exported graph changes for the same weights (part of cached file names).
EXPORT_VERSION = 2


def export_shape(loaded: LoadedModel, shape: tuple[int, int] | None) -> tuple[int, int]:
    """The network shape to export: ``shape``, or the checkpoint's one fixed shape."""
    if shape is not None:
        return int(shape[0]), int(shape[1])
    fixed = loaded.preprocess.fixed_shape
    if fixed is None:
        raise EngineError(
            f"{loaded.model_id!r} keeps each source's aspect ratio, so its network shape depends on the source "
            "resolution: give the source size (build-engine --source-size WxH)"
        )
    return fixed


class _Fp32Norm(nn.Module):
    """Runs a LayerNorm / GroupNorm in float32 inside an FP16 graph: cast in, normalise, cast back."""

    def __init__(self, norm: nn.LayerNorm | nn.GroupNorm) -> None:
        super().__init__()
        self.norm = norm.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.float()).to(x.dtype)  # type: ignore[no-any-return]


class _Fp32Module(nn.Module):
    """Runs a whole submodule in float32 inside an FP16 graph: floating tensor arguments cast in, floating
    tensor outputs cast back to the input's dtype.

    Used for SwinV2's cosine attention: ``normalize`` of the zero keys of padded window tokens divides 0 by
    ``max(0, eps=1e-12)``, and 1e-12 is 0 in FP16, so the FP16 graph would produce NaN.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.inner = module.float()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        dtype = next((a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()), None)

        def up(v: Any) -> Any:
            return v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v

        out = self.inner(*[up(a) for a in args], **{k: up(v) for k, v in kwargs.items()})
        if dtype is None:
            return out

        def down(v: Any) -> Any:
            return v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v

        return tuple(down(v) for v in out) if isinstance(out, tuple) else down(out)


# attention modules run in float32 in FP16 graphs (see _Fp32Module)
_FP32_MODULES = ("Swinv2SelfAttention",)


class _ExplicitSelfAttention(nn.Module):
    """ViT self-attention written out as MatMul -> Softmax -> MatMul, with the Softmax in float32.

    Replaces transformers' ``DPTSelfAttention`` for export only (same weights, same maths). The query is
    scaled before the first product, the form TensorRT's attention fusion expects.
    """

    def __init__(self, attn: nn.Module, fp32_softmax: bool) -> None:
        super().__init__()
        a: Any = attn  # transformers' module: attributes checked by _is_vit_self_attention
        self.query: nn.Linear = a.query
        self.key: nn.Linear = a.key
        self.value: nn.Linear = a.value
        self.heads = int(a.num_attention_heads)
        self.head_size = int(a.attention_head_size)
        self.scaling = float(getattr(attn, "scaling", self.head_size**-0.5))
        self.fp32_softmax = fp32_softmax

    def forward(self, hidden_states: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, None]:
        n = hidden_states.shape[0]
        shape = (n, -1, self.heads, self.head_size)
        q = self.query(hidden_states).view(shape).transpose(1, 2) * self.scaling
        k = self.key(hidden_states).view(shape).transpose(1, 2)
        v = self.value(hidden_states).view(shape).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2))
        # the Softmax in float32 (cast back for the second product) unless asked otherwise
        probs = F.softmax(scores.float(), dim=-1).to(v.dtype) if self.fp32_softmax else F.softmax(scores, dim=-1)
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(n, -1, self.heads * self.head_size)
        return ctx, None


class _GraphIO(nn.Module):
    """float32 in -> model in ``dtype`` -> float32 out (the Casts at the graph's edges)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.module(pixel_values.to(self.dtype)).float()  # type: ignore[no-any-return]


def _is_vit_self_attention(m: nn.Module) -> bool:
    """DPT's own ViT self-attention only: other backbones' attention modules with the same attribute names
    (SwinV2's cosine attention with a position-bias MLP, BEiT's relative position bias) compute more than
    plain softmax attention, and are exported as they are."""
    if type(m).__name__ not in ("DPTSelfAttention", "DPTViTSelfAttention") or not type(m).__module__.startswith(
            "transformers.models.dpt."):
        return False
    return all(isinstance(getattr(m, a, None), nn.Linear) for a in ("query", "key", "value")) and all(
        hasattr(m, a) for a in ("num_attention_heads", "attention_head_size")
    )


def prepare_for_export(module: nn.Module, precision: Precision, fp32_softmax: bool = True) -> nn.Module:
    """A copy of ``module`` ready for export: explicit attention, and for FP16 a half model whose norms and
    attention Softmax run in float32, wrapped so that the graph's input and output are float32."""
    m = copy.deepcopy(module).eval().float()
    n_attn = n_norm = 0
    for name, child in list(m.named_modules()):
        if _is_vit_self_attention(child):
            _set_submodule(m, name, _ExplicitSelfAttention(child, fp32_softmax))
            n_attn += 1
    if precision == "fp16":
        m = m.half()
        for name, child in list(m.named_modules()):
            if type(child).__name__ in _FP32_MODULES:
                _set_submodule(m, name, _Fp32Module(child))
        for name, child in list(m.named_modules()):
            if isinstance(child, nn.LayerNorm | nn.GroupNorm) and ".inner." not in f".{name}.":
                _set_submodule(m, name, _Fp32Norm(child))
                n_norm += 1
    log.debug("export copy: %d attention blocks made explicit, %d norms kept in float32", n_attn, n_norm)
    dtype = torch.float16 if precision == "fp16" else torch.float32
    wrapped = _GraphIO(m, dtype).eval()
    for p in wrapped.parameters():
        p.requires_grad_(False)
    return wrapped


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def export_onnx(loaded: LoadedModel, path: str | Path, precision: Precision = "fp16",
                opset: int = DEFAULT_OPSET, fp32_softmax: bool = True, device: str | None = None,
                shape: tuple[int, int] | None = None) -> Path:
    """Export ``loaded`` to ONNX at ``path`` (written atomically) and return the path.

    Dynamic batch axis; fixed ``H x W`` = ``shape`` (default: the checkpoint's fixed shape, see
    :func:`export_shape`). Input ``pixel_values`` and output
    ``logits`` / ``depth`` are float32 for both precisions. The trace runs on ``device`` (default: CUDA when
    available, since an FP16 forward of a large model on CPU is slow); the graph is the same either way.
    """
    if precision not in ("fp32", "fp16"):
        raise EngineError(f"ONNX export supports fp32 and fp16, not {precision!r}")
    path = Path(path)
    out_name = OUTPUT_NAME[loaded.task]
    h, w = export_shape(loaded, shape)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    wrapped = prepare_for_export(loaded.module, precision, fp32_softmax=fp32_softmax).to(dev)
    dummy = torch.zeros(2, 3, h, w, dtype=torch.float32, device=dev)
    out_shapes: list[tuple[int, ...]] = []
    hook = wrapped.register_forward_hook(
        lambda _m, _i, out: out_shapes.append(tuple(int(d) for d in out.shape[1:]))
    )
    dynamic_axes = {INPUT_NAME: {0: "batch"}, out_name: {0: "batch"}}
    with atomic_path(path) as tmp, torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # transformers' shape checks trace to constants: exactly right for a fixed H x W
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # the TorchScript exporter is deprecated (torch >= 2.9) but is the measured, working path for DPT
        # here; the torch.export-based one needs onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            torch.onnx.export(
                wrapped,
                (dummy,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[out_name],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as e:
            raise EngineError(f"ONNX export of {loaded.model_id!r} failed: {type(e).__name__}: {e}") from e
        finally:
            hook.remove()
        _fix_output_shape(tmp, out_name, out_shapes[-1])
    log.info("exported %s %s (%s, %dx%d, opset %d) to %s", loaded.task, loaded.model_id, precision,
             w, h, opset, path)
    return path


def _fix_output_shape(path: Path, out_name: str, shape: tuple[int, ...]) -> None:
    """Declare the output as ``batch x <static dims>`` (the tracer names the fixed dims symbolically)."""
    import onnx

    model = onnx.load(str(path))
    (out,) = [o for o in model.graph.output if o.name == out_name]
    dims = out.type.tensor_type.shape.dim
    del dims[:]
    dims.add().dim_param = "batch"
    for v in shape:
        dims.add().dim_value = int(v)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def onnx_sha256(path: str | Path) -> str:
    """SHA-256 of an ONNX model file, including any external-data files it references."""
    path = Path(path)
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    for name in sorted(_external_data_files(path)):
        h.update(name.encode())
        with (path.parent / name).open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _external_data_files(path: Path) -> set[str]:
    try:
        import onnx
    except ImportError:  # no onnx: a >2 GB model's data files are not hashed
        return set()
    model = onnx.load(str(path), load_external_data=False)
    names: set[str] = set()
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                names.add(entry.value)
    return names


def onnx_cache_path(cache_dir: str | Path, loaded: LoadedModel, precision: Precision,
                    opset: int = DEFAULT_OPSET, shape: tuple[int, int] | None = None) -> Path:
    """Where an export of ``loaded`` is cached: keyed by weights, precision, network shape, opset and exporter."""
    import transformers

    h, w = export_shape(loaded, shape)
    key = "|".join(str(v) for v in (
        loaded.weights_hash, loaded.model_type, precision, h, w, opset, EXPORT_VERSION,
        torch.__version__, transformers.__version__,
    ))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root(cache_dir) / "onnx" / f"{loaded.task}-{precision}-{w}x{h}-{digest}.onnx"


class OnnxRuntimeEngine:
    """Runs an exported graph with onnxruntime's CPU provider; used to check exports, not in the pipeline."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.output_name = self._session.get_outputs()[0].name

    def run(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self._session.run([self.output_name], {INPUT_NAME: x})
        return torch.from_numpy(out)
