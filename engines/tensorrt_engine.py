"""TensorRT backend: ONNX export -> strongly typed FP16 network -> serialized plan cached on disk -> runtime.

Precision lives in the ONNX graph (``engines.onnx_export``): the network is built strongly typed (TensorRT 11
has no FP16 builder flag; 10.12+ accepts the same flow), so every op runs in the type the graph gives it.

The plan is cached under ``<cache_dir>/tensorrt/`` keyed by everything that invalidates it
(:class:`engines.cache.PlanKey`), the network shape included: one plan per shape (a checkpoint that keeps the
source's aspect ratio has one shape per source resolution); the builder's timing cache is kept next to it, one per GPU model and
TensorRT version, so rebuilding for new shapes reuses earlier kernel timings.

At run time all device memory and streams come from torch (one CUDA context; no pycuda): the input and
output are torch tensors whose ``data_ptr()`` is handed to ``set_tensor_address``, and the plan runs with
``execute_async_v3`` on the caller's current torch CUDA stream.

``tensorrt`` is imported lazily: this module imports fine without it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engines.base import OUTPUT_NAME, BackendUnavailable, Engine, EngineConfig, EngineError
from engines.cache import PlanKey, atomic_path, atomic_write_bytes, cache_root
from engines.loading import LoadedModel
from engines.onnx_export import INPUT_NAME, Precision, export_onnx, export_shape, onnx_cache_path, onnx_sha256

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)

MIN_TENSORRT = (10, 12)
DEFAULT_WORKSPACE_BYTES = 8 << 30

_INSTALL_HINT = "pip install 'dptstream[tensorrt]', or use --engine torch"


def require_tensorrt() -> str:
    """Check that the TensorRT runtime is importable and recent enough; return its version.

    Raises :class:`BackendUnavailable` with one line otherwise.
    """
    try:
        import tensorrt
    except ImportError as e:
        raise BackendUnavailable(f"TensorRT is not installed ({_INSTALL_HINT})") from e
    except Exception as e:  # a broken install: missing libnvinfer, CUDA mismatch
        raise BackendUnavailable(
            f"TensorRT failed to import: {type(e).__name__}: {e} ({_INSTALL_HINT})"
        ) from e
    version = str(getattr(tensorrt, "__version__", ""))
    if not hasattr(tensorrt, "Builder") or not version:
        raise BackendUnavailable(
            f"the installed 'tensorrt' package has no runtime (type stubs only?) ({_INSTALL_HINT})"
        )
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < MIN_TENSORRT:
        raise BackendUnavailable(
            f"TensorRT {version} is too old: {MIN_TENSORRT[0]}.{MIN_TENSORRT[1]}+ is needed for strongly "
            f"typed FP16 networks ({_INSTALL_HINT})"
        )
    return version


def _cuda_device(cfg: EngineConfig) -> torch.device:
    if cfg.device == "cpu":
        raise BackendUnavailable("the TensorRT backend runs on CUDA; use --engine torch for --device cpu")
    if not torch.cuda.is_available():
        raise BackendUnavailable("the TensorRT backend needs an NVIDIA GPU, and torch sees none")
    return torch.device("cuda", torch.cuda.current_device())


def _precision(cfg: EngineConfig) -> Precision:
    if cfg.precision in ("auto", "fp16"):
        return "fp16"
    if cfg.precision == "fp32":
        return "fp32"
    raise EngineError(f"the TensorRT backend builds fp16 or fp32 graphs, not {cfg.precision}")


def _make_logger() -> trt.ILogger:
    """A TensorRT logger that forwards to Python logging (TensorRT's INFO is chatty: logged at DEBUG)."""
    import tensorrt as trt

    sev = trt.ILogger.Severity
    levels = {
        sev.INTERNAL_ERROR: logging.CRITICAL,
        sev.ERROR: logging.ERROR,
        sev.WARNING: logging.WARNING,
        sev.INFO: logging.DEBUG,
    }
    trt_log = logging.getLogger("tensorrt")

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            level = levels.get(severity)
            if level is not None:  # VERBOSE is dropped
                trt_log.log(level, "%s", msg)

    return _Logger()


def _plan_key(loaded: LoadedModel, onnx_path: Path, precision: Precision, device: torch.device,
              min_batch: int, opt_batch: int, max_batch: int, trt_version: str,
              shape: tuple[int, int]) -> PlanKey:
    major, minor = torch.cuda.get_device_capability(device)
    return PlanKey(
        task=loaded.task,
        weights_hash=loaded.weights_hash,
        onnx_sha256=onnx_sha256(onnx_path),
        tensorrt_version=trt_version,
        gpu_name=torch.cuda.get_device_name(device),
        compute_capability=f"{major}.{minor}",
        precision=precision,
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        height=shape[0],
        width=shape[1],
    )


def _check_batches(min_batch: int, opt_batch: int, max_batch: int) -> None:
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise EngineError(
            "batch sizes must satisfy 1 <= min <= opt <= max, "
            f"got min={min_batch} opt={opt_batch} max={max_batch}"
        )


def _build_plan(onnx_path: Path, key: PlanKey, plan_path: Path, timing_path: Path, logger: trt.ILogger,
                workspace_bytes: int | None) -> None:
    """Parse the ONNX graph into a strongly typed network, build, and write the plan + timing cache."""
    import tensorrt as trt

    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    # TensorRT 11 is always strongly typed (the flag is deprecated there and ignored)
    flags = 1 << int(strongly_typed) if strongly_typed is not None else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {onnx_path.name}: {errors or 'unknown error'}")

    config = builder.create_builder_config()
    # layer names, types and tactics in the plan, for IEngineInspector (is attention fused?); no run-time cost
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    profile = builder.create_optimization_profile()
    chw = (3, key.height, key.width)
    profile.set_shape(
        INPUT_NAME,
        trt.Dims([key.min_batch, *chw]),
        trt.Dims([key.opt_batch, *chw]),
        trt.Dims([key.max_batch, *chw]),
    )
    if config.add_optimization_profile(profile) < 0:
        raise EngineError("TensorRT rejected the optimization profile")

    blob = timing_path.read_bytes() if timing_path.exists() else b""
    timing_cache = config.create_timing_cache(blob)
    if not config.set_timing_cache(timing_cache, False):
        log.warning("timing cache %s does not match this GPU / TensorRT; starting a fresh one", timing_path)
        timing_cache = config.create_timing_cache(b"")
        config.set_timing_cache(timing_cache, False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(
            "TensorRT failed to build the engine (see the TensorRT errors above; out of GPU memory?)"
        )
    atomic_write_bytes(timing_path, memoryview(config.get_timing_cache().serialize()))
    with atomic_path(plan_path) as tmp, tmp.open("wb") as f:
        f.write(memoryview(plan))
    plan_path.with_suffix(".json").write_text(key.to_json() + "\n")


def ensure_plan(loaded: LoadedModel, cfg: EngineConfig, min_batch: int, opt_batch: int, max_batch: int,
                logger: trt.ILogger | None = None,
                workspace_bytes: int | None = DEFAULT_WORKSPACE_BYTES,
                shape: tuple[int, int] | None = None) -> tuple[Path, PlanKey, bool]:
    """Export the ONNX graph (cached) and build the TensorRT plan for one network ``shape`` (default: the
    checkpoint's fixed shape), or reuse a cached one.

    Returns ``(plan path, key, built)`` where ``built`` says whether the plan was built now.
    """
    trt_version = require_tensorrt()
    device = _cuda_device(cfg)
    precision = _precision(cfg)
    _check_batches(min_batch, opt_batch, max_batch)
    root = cache_root(cfg.cache_dir)
    hw = export_shape(loaded, shape)

    onnx_path = onnx_cache_path(root, loaded, precision, shape=hw)
    fp32_softmax = cfg.fp32_softmax or precision == "fp32"
    if not fp32_softmax:  # a different graph: FP16 Softmax, no Casts around it
        onnx_path = onnx_path.with_name(f"{onnx_path.stem}-fp16softmax{onnx_path.suffix}")
    if onnx_path.exists():
        log.info("reusing exported ONNX graph %s", onnx_path)
    else:
        export_onnx(loaded, onnx_path, precision, shape=hw, fp32_softmax=fp32_softmax)
    key = _plan_key(loaded, onnx_path, precision, device, min_batch, opt_batch, max_batch, trt_version, hw)
    plan_path = key.plan_path(root)
    if plan_path.exists():
        log.info("reusing cached TensorRT plan %s", plan_path)
        return plan_path, key, False

    log.info("building TensorRT %s plan for %s (%s, batch %d..%d, opt %d, %dx%d, TensorRT %s); "
             "this takes a while, the plan is cached for next time",
             precision, loaded.model_id, key.gpu_name, min_batch, max_batch, opt_batch, key.width,
             key.height, trt_version)
    t0 = time.monotonic()
    with torch.cuda.device(device):
        _build_plan(onnx_path, key, plan_path, key.timing_cache_path(root), logger or _make_logger(),
                    workspace_bytes)
    log.info("built TensorRT plan %s in %.0f s", plan_path, time.monotonic() - t0)
    return plan_path, key, True


def build_engine(cfg: EngineConfig, min_batch: int = 1, opt_batch: int | None = None,
                 max_batch: int | None = None, source_size: tuple[int, int] | None = None) -> Path:
    """``dptstream build-engine``: export ONNX and build (or reuse) the cached TensorRT plan; return its path.

    ``opt_batch`` and ``max_batch`` default to ``cfg.max_batch``: with the defaults the plan is the one
    :class:`TensorRTEngine` loads for the same config (profile ``1 .. max_batch``, optimised for
    ``max_batch``), so a later run starts without building. ``source_size`` (``(width, height)`` of the
    source) picks the network shape of a checkpoint that keeps the aspect ratio; without it the checkpoint's
    fixed shape is built. Raises :class:`BackendUnavailable` (one line) when TensorRT or a GPU is missing,
    before loading the model.
    """
    from engines.loading import load_model

    require_tensorrt()
    _cuda_device(cfg)
    max_b = max_batch or cfg.max_batch
    opt_b = opt_batch or max_b
    _check_batches(min_batch, opt_b, max_b)
    loaded = load_model(cfg.task, cfg.model, cfg.input_size)
    shape = loaded.preprocess.network_shape(source_size[1], source_size[0]) if source_size else None
    # logs whether it built or reused
    path, _, _ = ensure_plan(loaded, cfg, min_batch, opt_b, max_b, shape=shape)
    return path


def _engine_information(engine: trt.ICudaEngine) -> str | None:
    """The plan's layers as JSON (``IEngineInspector``; detailed for plans built here), or None."""
    import tensorrt as trt

    inspector = engine.create_engine_inspector()
    if inspector is None:
        return None
    return inspector.get_engine_information(trt.LayerInformationFormat.JSON)


# kernel / layer names of fused attention (TensorRT's MHA and flash kernels, 10.14+'s IAttention layer type);
# not "attention" in layer names, which carry the ONNX node names ("/layer.0/attention/Softmax")
_FUSED_ATTENTION = ("mha", "flash")


def attention_report(info: str | None) -> dict[str, Any]:
    """What ``IEngineInspector`` says about attention in a plan: is the MatMul -> Softmax -> MatMul fused?

    ``info`` is ``get_engine_information(JSON)``: ``{"Layers": [...]}`` with one name per layer
    (``LAYER_NAMES_ONLY``) or one object per layer (``DETAILED``: ``Name``, ``LayerType``, ``TacticName``...).
    ``attention_fused``: True when a layer's name, type or tactic names a fused attention kernel (MHA, FMHA,
    flash); False when Softmax layers stand alone (the attention ran as separate MatMul / Softmax / MatMul
    kernels, which is what Casts to FP32 around the Softmax can force); None when neither shows (e.g. the
    block went whole into one Myelin ``ForeignNode``, whose kernels the inspector does not list).
    """
    if not info:
        return {"layers": 0, "attention_fused": None, "softmax_layers": 0, "fused_attention_layers": 0,
                "evidence": ["no layer information in the plan"]}
    try:
        doc = json.loads(info)
    except ValueError:
        return {"layers": 0, "attention_fused": None, "softmax_layers": 0, "fused_attention_layers": 0,
                "evidence": ["layer information is not JSON"]}
    layers = doc.get("Layers", []) if isinstance(doc, dict) else []
    fused: list[str] = []
    softmax: list[str] = []
    foreign = 0
    for layer in layers:
        if isinstance(layer, dict):
            name = str(layer.get("Name", ""))
            kind = str(layer.get("LayerType", ""))
            text = " ".join(str(layer.get(k, "")) for k in ("Name", "LayerType", "TacticName", "Metadata"))
        else:  # LAYER_NAMES_ONLY: the name alone
            name = text = str(layer)
            kind = ""
        low = text.lower()
        if "foreignnode" in low or kind.lower() == "myelin":
            foreign += 1
        if any(k in low for k in _FUSED_ATTENTION) or "attention" in kind.lower():
            fused.append(name)
        elif "softmax" in kind.lower() or ("softmax" in name.lower() and "foreignnode" not in name.lower()):
            softmax.append(name)
    verdict: bool | None = True if fused else (False if softmax else None)
    evidence = [f"fused: {n}" for n in fused[:3]] + [f"standalone softmax: {n}" for n in softmax[:3]]
    if verdict is None:
        evidence.append(f"{foreign} Myelin/ForeignNode layers: attention fusion inside them is not visible")
    return {"layers": len(layers), "attention_fused": verdict, "softmax_layers": len(softmax),
            "fused_attention_layers": len(fused), "myelin_layers": foreign, "evidence": evidence}


def _torch_dtype(dtype: trt.DataType) -> torch.dtype:
    import tensorrt as trt

    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
             trt.DataType.BF16: torch.bfloat16, trt.DataType.INT32: torch.int32,
             trt.DataType.INT64: torch.int64}
    if dtype not in table:
        raise EngineError(f"unsupported TensorRT I/O tensor type {dtype}")
    return table[dtype]


@dataclass
class _Plan:
    """One deserialized plan (one network shape) and its execution context."""

    path: Path
    shape: tuple[int, int]
    engine: trt.ICudaEngine
    context: trt.IExecutionContext
    in_dtype: torch.dtype
    out_dtype: torch.dtype
    device_memory_bytes: int = 0
    plan_bytes: int = 0
    layers: dict[str, Any] | None = None  # attention_report of the plan


class TensorRTEngine(Engine):
    """The :class:`engines.base.Engine` protocol on cached TensorRT plans, one per network shape (each with one
    optimization profile, batch ``1 .. max_batch``).

    The checkpoint's fixed shape is built (or loaded) at construction; other shapes (checkpoints that keep the
    aspect ratio) in :meth:`warmup` for the streams' shapes, or on first use, with a warning.
    """

    def __init__(self, loaded: LoadedModel, cfg: EngineConfig,
                 workspace_bytes: int | None = DEFAULT_WORKSPACE_BYTES) -> None:
        require_tensorrt()
        import tensorrt as trt

        self._device = _cuda_device(cfg)
        self._precision = _precision(cfg)
        self._loaded = loaded
        self._cfg = cfg
        self._workspace = workspace_bytes
        self._out = OUTPUT_NAME[loaded.task]
        self._logger = _make_logger()  # must outlive the runtime and everything made from it
        self._runtime: trt.Runtime | None = trt.Runtime(self._logger)
        self._plans: dict[tuple[int, int], _Plan] = {}
        self._side_stream: torch.cuda.Stream | None = None
        fixed = loaded.preprocess.fixed_shape
        first = self._plan_for(fixed, quiet=True) if fixed is not None else None
        self.plan_path: Path | None = first.path if first is not None else None
        self.spec = loaded.engine_spec(
            f"tensorrt-{self._precision}" + ("" if cfg.fp32_softmax or self._precision == "fp32" else "-fp16softmax"),
            str(self._device), first.in_dtype if first is not None else torch.float32,  # the graph casts to FP16
            cfg.max_batch)

    def _deserialize(self, plan_path: Path) -> trt.ICudaEngine | None:
        if self._runtime is None:
            raise EngineError("the TensorRT engine is closed")
        return self._runtime.deserialize_cuda_engine(plan_path.read_bytes())

    def _plan_for(self, shape: tuple[int, int], quiet: bool = False) -> _Plan:
        if shape in self._plans:
            return self._plans[shape]
        import tensorrt as trt

        if self._plans and not quiet:
            log.warning("TensorRT plan for a new %s network shape %dx%d needed mid-run; loading or building it "
                        "now (warm the engine up for every stream's shape to avoid this)",
                        self._loaded.task, shape[1], shape[0])
        cfg, loaded, m = self._cfg, self._loaded, self._cfg.max_batch
        with torch.cuda.device(self._device):
            plan_path, _, built = ensure_plan(loaded, cfg, 1, m, m, self._logger, self._workspace, shape=shape)
            engine = self._deserialize(plan_path)
            if engine is None and not built:  # unreadable cached plan: rebuild once
                log.warning("cached TensorRT plan %s could not be loaded; rebuilding it", plan_path)
                plan_path.unlink(missing_ok=True)
                plan_path, _, _ = ensure_plan(loaded, cfg, 1, m, m, self._logger, self._workspace, shape=shape)
                engine = self._deserialize(plan_path)
            if engine is None:
                raise EngineError(
                    f"TensorRT could not load the plan {plan_path} (see the TensorRT errors above)"
                )
            context = engine.create_execution_context()
            if context is None:
                raise EngineError("TensorRT could not create an execution context (out of GPU memory?)")

        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if inputs != [INPUT_NAME] or self._out not in outputs:
            raise EngineError(f"plan {plan_path.name} has inputs {inputs} and outputs {outputs}; "
                              f"expected [{INPUT_NAME!r}] and {self._out!r}")
        plan = _Plan(plan_path, shape, engine, context, _torch_dtype(engine.get_tensor_dtype(INPUT_NAME)),
                     _torch_dtype(engine.get_tensor_dtype(self._out)),
                     # TensorRT's own device memory is invisible to torch's counters: the execution context's
                     # activation memory (device_memory_size_v2, TensorRT 10+); the weights are in the plan file
                     int(engine.device_memory_size_v2), plan_path.stat().st_size,
                     attention_report(_engine_information(engine)))
        self._plans[shape] = plan
        return plan

    def _run(self, plan: _Plan, x: torch.Tensor) -> torch.Tensor:
        context = plan.context
        if not context.set_input_shape(INPUT_NAME, tuple(x.shape)):
            raise EngineError(f"TensorRT rejected input shape {tuple(x.shape)} (plan built for "
                              f"batch 1..{self.spec.max_batch}, {plan.shape[0]}x{plan.shape[1]})")
        dims = context.get_tensor_shape(self._out)
        out = torch.empty([dims[i] for i in range(len(dims))], dtype=plan.out_dtype, device=self._device)
        context.set_tensor_address(INPUT_NAME, x.data_ptr())
        context.set_tensor_address(self._out, out.data_ptr())
        stream = torch.cuda.current_stream(self._device)
        if stream.cuda_stream != 0:
            ok = context.execute_async_v3(stream.cuda_stream)
        else:
            # TensorRT on the legacy default stream synchronizes; run on a side stream ordered after it
            if self._side_stream is None:
                self._side_stream = torch.cuda.Stream(self._device)
            side = self._side_stream
            side.wait_stream(stream)
            ok = context.execute_async_v3(side.cuda_stream)
            x.record_stream(side)
            out.record_stream(side)
            stream.wait_stream(side)
        if not ok:
            raise EngineError("TensorRT execution failed (see the TensorRT errors above)")
        return out

    @torch.inference_mode()
    def infer(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._runtime is None:
            raise EngineError("the TensorRT engine is closed")
        n = batch.shape[0]
        m = self.spec.max_batch
        if n > m:
            outs = [self.infer(batch[i : i + m]) for i in range(0, n, m)]
            return {self._out: torch.cat([o[self._out] for o in outs], dim=0)}
        plan = self._plan_for((int(batch.shape[-2]), int(batch.shape[-1])))
        x = batch.to(self._device, plan.in_dtype, non_blocking=True).contiguous()
        return {self._out: self._run(plan, x).float()}

    def warmup(self, shapes: Iterable[tuple[int, int]] | None = None) -> None:
        """Load or build the plan for every network shape in ``shapes`` (default: the checkpoint's fixed shape)
        and run the largest batch once on each (first-run allocations and lazy kernel loading happen here)."""
        fixed = self.spec.preprocess.fixed_shape
        todo = list(shapes) if shapes is not None else ([fixed] if fixed else [])
        for shape in dict.fromkeys(todo):
            plan = self._plan_for(shape, quiet=True)
            x = torch.zeros(self.spec.max_batch, 3, *shape, dtype=plan.in_dtype, device=self._device)
            self.infer(x)
        torch.cuda.current_stream(self._device).synchronize()

    @property
    def device_memory_bytes(self) -> int:
        """TensorRT's activation memory of every loaded plan's context (not in torch's memory counters)."""
        return sum(p.device_memory_bytes for p in self._plans.values())

    @property
    def plan_bytes(self) -> int:
        """Size of the loaded plans (about the weights TensorRT holds on the device)."""
        return sum(p.plan_bytes for p in self._plans.values())

    @property
    def layers(self) -> dict[str, Any]:
        """What IEngineInspector says about attention in the first loaded plan (see :func:`attention_report`)."""
        first = next(iter(self._plans.values()), None)
        return (first.layers if first is not None else None) or attention_report(None)

    def close(self) -> None:
        """Release the contexts, then the engines, then the runtime (TensorRT's required order). Idempotent."""
        for plan in self._plans.values():
            plan.context = None  # type: ignore[assignment]
        for plan in self._plans.values():
            plan.engine = None  # type: ignore[assignment]
        self._plans.clear()
        self._runtime = None
