"""OpenVINO backend for CPUs: the project's FP32 ONNX export -> OpenVINO model at a static ``1 x 3 x H x W``
shape -> compiled for the CPU in FP32 or BF16, with OpenVINO's own model cache on disk.

Precision is decided per task by fidelity (:func:`resolve_precision`): BF16 for depth where the CPU computes
BF16 natively (AMX / AVX-512 BF16: ``OPTIMIZATION_CAPABILITIES`` lists ``BF16``), FP32 for segmentation,
whose BF16 masks did not hold the 98.5 % pixel-agreement gate against transformers' FP32 path.

Compiled per network shape (a checkpoint that keeps the source's aspect ratio has one shape per source
resolution) at batch 1: a batch of N frames runs as N requests of an ``AsyncInferQueue`` over the compiled
model's streams (the ``THROUGHPUT`` hint: one stream per few cores); a lone frame runs as one request of a model
compiled with the ``LATENCY`` hint (all cores on one frame), the only one compiled when ``max_batch`` is 1 (the
latency profile). OpenVINO releases the GIL while it computes, so the pipeline's preprocessing and
postprocessing threads run meanwhile.

Compiled models are cached under ``<cache_dir>/openvino/<key>/`` (OpenVINO's ``CACHE_DIR``), one directory per
:class:`OpenVINOKey` (weights, network shape, batch, precision, hint, threads, OpenVINO version, CPU): a second
start imports the compiled blob instead of compiling. A cache entry that does not load is removed and rebuilt.

``openvino`` is imported lazily: this module imports fine without it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from engines.base import (
    OUTPUT_NAME,
    BackendUnavailable,
    Engine,
    EngineConfig,
    EngineError,
    EngineUsageError,
    Task,
    UnsupportedPrecision,
    error_reason,
)
from engines.cache import atomic_path, usable_cache_root
from engines.loading import LoadedModel

if TYPE_CHECKING:
    import openvino as ov

log = logging.getLogger(__name__)

OvPrecision = Literal["fp32", "bf16"]
Hint = Literal["LATENCY", "THROUGHPUT"]
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
_INSTALL_HINT = "pip install openvino, or use --engine torch"

# BF16 segmentation measured against transformers' FP32 path on real-content frames (random-weight DPT-Base
# ADE at 384x384, three frames): mask pixels that agree. Stated in the one warning when bf16 is forced.
BF16_SEGMENTATION_AGREEMENT = "0.91-0.96"


def require_openvino() -> str:
    """Check that OpenVINO imports; return its version. :class:`BackendUnavailable` (one line) otherwise."""
    try:
        import openvino
    except ModuleNotFoundError as e:
        if e.name == "openvino":
            raise BackendUnavailable(f"OpenVINO is not installed ({_INSTALL_HINT})") from e
        raise BackendUnavailable(_broken(e)) from e
    except Exception as e:  # installed but broken: a missing shared library or dependency, a partial upgrade
        raise BackendUnavailable(_broken(e)) from e
    return str(openvino.__version__)


def _broken(e: BaseException) -> str:
    return (f"OpenVINO is installed but fails to import ({type(e).__name__}: {error_reason(e, 300)}); reinstall it "
            "(pip install --force-reinstall openvino), or use --engine torch")


def cpu_supports_bf16(core: ov.Core) -> bool:
    """Whether the CPU computes BF16 natively (AMX or AVX-512 BF16), as OpenVINO's CPU plugin reports it."""
    try:
        caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:
        return False
    return "BF16" in [str(c) for c in caps]


def resolve_precision(task: Task, requested: str, bf16_ok: bool) -> tuple[OvPrecision, str | None]:
    """``(precision, warning or None)`` for ``task`` given the user's ``--precision`` and the CPU.

    ``auto``: BF16 for depth where the CPU has it, else FP32; FP32 for segmentation. ``bf16`` on a CPU without
    it, or ``fp16`` (NaN masks and slower than FP32 on these CPUs), is an :class:`UnsupportedPrecision` line.
    """
    if requested == "fp32":
        return "fp32", None
    if requested == "fp16":
        raise UnsupportedPrecision(
            "--engine openvino runs fp32 or bf16 on CPU, not fp16 (OpenVINO's FP16 on this CPU gave NaN masks); "
            "use --precision auto, fp32 or bf16"
        )
    if requested == "bf16":
        if not bf16_ok:
            raise UnsupportedPrecision(
                "--precision bf16: this CPU has no native BF16 (AMX or AVX-512 BF16); use --precision fp32 or auto"
            )
        if task == "segmentation":
            return "bf16", (f"segmentation in BF16: its masks agreed with FP32 on only {BF16_SEGMENTATION_AGREEMENT} "
                            "of pixels in our measurements (the gate is 98.5 %); --precision fp32 keeps them exact")
        return "bf16", None
    if requested != "auto":
        raise UnsupportedPrecision(f"--precision {requested!r}: use auto, fp32 or bf16 with --engine openvino")
    return ("bf16" if task == "depth" and bf16_ok else "fp32"), None


@dataclass(frozen=True)
class OpenVINOKey:
    """Everything that invalidates a compiled OpenVINO model (cf. :class:`engines.cache.PlanKey`)."""

    task: Task
    weights_hash: str
    model_type: str
    openvino_version: str
    cpu: str
    precision: OvPrecision
    hint: Hint
    threads: int
    batch: int
    height: int
    width: int

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def cache_dir(self, root: Path) -> Path:
        name = (f"{self.task}-{self.precision}-{self.hint.lower()}-b{self.batch}-{self.width}x{self.height}"
                f"-{self.digest()[:16]}")
        return root / "openvino" / name


def _cpu_name(core: ov.Core) -> str:
    try:
        return str(core.get_property("CPU", "FULL_DEVICE_NAME"))
    except Exception:
        return "unknown CPU"


@dataclass
class _Compiled:
    shape: tuple[int, int]
    model: Any  # ov.CompiledModel
    request: Any  # ov.InferRequest: batch-1 calls
    queue: Any  # ov.AsyncInferQueue: several frames across the compiled model's streams
    jobs: int
    out_shape: tuple[int, ...]  # the output at batch 1 (N x H x W x C logits, N x H x W depth)
    from_cache: bool
    cache_dir: Path


class OpenVINOEngine(Engine):
    """The :class:`engines.base.Engine` protocol on OpenVINO's CPU plugin (see the module docstring)."""

    def __init__(self, loaded: LoadedModel, cfg: EngineConfig) -> None:
        self._version = require_openvino()
        import openvino as ov

        if cfg.device == "cuda":
            raise EngineUsageError("--engine openvino runs on the CPU; use --device cpu (or auto), or --engine torch")
        self._core = ov.Core()
        self._loaded = loaded
        self._cfg = cfg
        self._out = OUTPUT_NAME[loaded.task]
        self._root = usable_cache_root(cfg.cache_dir)
        self.precision, warning = resolve_precision(loaded.task, cfg.precision, cpu_supports_bf16(self._core))
        if warning:
            log.warning("%s", warning)
        # the latency profile (batch 1) wants each frame as soon as possible; batches want frames per second
        self.hint: Hint = "LATENCY" if cfg.max_batch == 1 else "THROUGHPUT"
        self._cpu = _cpu_name(self._core)
        self._compiled: dict[tuple[tuple[int, int], Hint], _Compiled] = {}
        self._lock = threading.Lock()  # one compile at a time; infer is called from one thread
        self._closed = False
        fixed = loaded.preprocess.fixed_shape
        if fixed is not None:
            self._compiled_for(fixed, self.hint, quiet=True)
        self.spec = loaded.engine_spec(f"openvino-cpu-{self.precision}", "cpu", torch.float32, cfg.max_batch)

    def key(self, shape: tuple[int, int], hint: Hint) -> OpenVINOKey:
        return OpenVINOKey(task=self._loaded.task, weights_hash=self._loaded.weights_hash,
                           model_type=self._loaded.model_type, openvino_version=self._version, cpu=self._cpu,
                           precision=self.precision, hint=hint, threads=int(self._cfg.threads or 0),
                           batch=1, height=shape[0], width=shape[1])

    def _config(self, cache_dir: Path, hint: Hint) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[self.precision],
            "PERFORMANCE_HINT": hint,
            "CACHE_DIR": str(cache_dir),
        }
        if self._cfg.threads:
            conf["INFERENCE_NUM_THREADS"] = int(self._cfg.threads)
        return conf

    def _onnx(self, shape: tuple[int, int]) -> Path:
        """The project's FP32 ONNX export at ``shape`` (cached; shared with the TensorRT path's exports)."""
        from engines.onnx_export import export_onnx, onnx_cache_path

        path = onnx_cache_path(self._root, self._loaded, "fp32", shape=shape)
        if not path.exists():
            try:
                export_onnx(self._loaded, path, "fp32", shape=shape, device="cpu")
            except EngineError as e:
                raise EngineError(f"{self._loaded.architecture} ({self._loaded.model_id!r}) does not convert "
                                  f"for OpenVINO: {e}; use --engine torch") from e
        return path

    def _read(self, shape: tuple[int, int]) -> Any:
        path = self._onnx(shape)
        try:
            model = self._core.read_model(str(path))
        except Exception:
            log.warning("cached ONNX graph %s does not load; exporting it again", path)
            path.unlink(missing_ok=True)
            path = self._onnx(shape)
            try:
                model = self._core.read_model(str(path))
            except Exception as e:
                raise EngineError(f"OpenVINO cannot read the ONNX export of {self._loaded.architecture} "
                                  f"({self._loaded.model_id!r}): {type(e).__name__}: {error_reason(e, 300)}; "
                                  "use --engine torch") from e
        model.reshape([1, 3, shape[0], shape[1]])  # static shape: OpenVINO's CPU plugin is fastest on it
        if self._loaded.task == "segmentation":
            # logits out channels-last (N x H x W x C): the mask's resize and per-pixel argmax run on that
            # layout (pipeline.stages.postprocess.segment), and OpenVINO transposes in its graph for much less
            # than a host copy of 150 x H x W floats per frame
            from openvino import Layout
            from openvino.preprocess import PrePostProcessor

            ppp = PrePostProcessor(model)
            ppp.output(0).model().set_layout(Layout("NCHW"))
            ppp.output(0).tensor().set_layout(Layout("NHWC"))
            model = ppp.build()
        return model

    def _compile(self, shape: tuple[int, int], cache_dir: Path, hint: Hint) -> Any:
        model = self._read(shape)
        try:
            return self._core.compile_model(model, "CPU", self._config(cache_dir, hint))
        except Exception as e:
            raise EngineError(f"OpenVINO could not compile {self._loaded.architecture} "
                              f"({self._loaded.model_id!r}): {type(e).__name__}: {error_reason(e, 300)}; "
                              "use --engine torch") from e

    def _compiled_for(self, shape: tuple[int, int], hint: Hint, quiet: bool = False) -> _Compiled:
        found = self._compiled.get((shape, hint))
        if found is not None:
            return found
        with self._lock:
            if (shape, hint) in self._compiled:
                return self._compiled[(shape, hint)]
            if self._closed:
                raise EngineError("the OpenVINO engine is closed")
            shapes = {s for s, _ in self._compiled}
            if shapes and shape not in shapes and not quiet:
                log.warning("OpenVINO model for a new %s network shape %dx%d needed mid-run; compiling it now "
                            "(warm the engine up for every stream's shape to avoid this)",
                            self._loaded.task, shape[1], shape[0])
            key = self.key(shape, hint)
            cache_dir = key.cache_dir(self._root)
            t0 = time.monotonic()
            cache_dir.parent.mkdir(parents=True, exist_ok=True)
            # one process at a time per cache entry: another process's import of a blob OpenVINO is still writing
            # (or one a rebuild is deleting) reads a file that changes under its mapping and dies of SIGBUS
            with open(cache_dir.parent / f"{cache_dir.name}.lock", "a+b") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    compiled = self._compile(shape, cache_dir, hint)
                except EngineError:
                    if not cache_dir.exists():
                        raise
                    # a cache entry that does not import (truncated, another build's): rebuild it, once
                    log.warning("OpenVINO model cache %s does not load; rebuilding it", cache_dir)
                    shutil.rmtree(cache_dir, ignore_errors=True)
                    compiled = self._compile(shape, cache_dir, hint)
                from_cache = _loaded_from_cache(compiled)
                # also when imported: a start stopped between OpenVINO's blob write and this one left none
                if not from_cache or not (cache_dir / "key.json").is_file():
                    with atomic_path(cache_dir / "key.json") as tmp:
                        tmp.write_text(json.dumps({**asdict(key), "digest": key.digest()}, indent=2,
                                                  sort_keys=True))
            import openvino as ov

            jobs = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            entry = _Compiled(shape, compiled, compiled.create_infer_request(), ov.AsyncInferQueue(compiled, jobs),
                              jobs, tuple(int(d) for d in compiled.outputs[0].get_shape()), from_cache, cache_dir)
            log.info("OpenVINO %s %s model %dx%d %s in %.1f s (%s hint, %d parallel requests, %s)",
                     self._loaded.task, self.precision.upper(), shape[1], shape[0],
                     "loaded from cache" if from_cache else "compiled", time.monotonic() - t0, hint, jobs,
                     cache_dir)
            self._compiled[(shape, hint)] = entry
            return entry

    @property
    def from_cache(self) -> dict[tuple[tuple[int, int], Hint], bool]:
        """Per compiled (network shape, hint): whether its compiled model was imported from the cache."""
        return {k: c.from_cache for k, c in self._compiled.items()}

    @property
    def cache_dirs(self) -> dict[tuple[tuple[int, int], Hint], Path]:
        return {k: c.cache_dir for k, c in self._compiled.items()}

    @property
    def parallel_requests(self) -> int:
        """Requests a batch runs in parallel (the batch model's streams)."""
        return max((c.jobs for (_, h), c in self._compiled.items() if h == self.hint), default=0)

    def _hints(self) -> list[Hint]:
        return ["LATENCY"] if self.hint == "LATENCY" else ["THROUGHPUT", "LATENCY"]

    def infer(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._closed:
            raise EngineError("the OpenVINO engine is closed")
        n = int(batch.shape[0])
        # a lone frame on the LATENCY model: under the THROUGHPUT hint one request gets one stream's cores only
        c = self._compiled_for((int(batch.shape[-2]), int(batch.shape[-1])), "LATENCY" if n == 1 else self.hint)
        x = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        # each request's output buffer is reused by its next run: copied once, straight into the batch's array
        out = np.empty((n, *c.out_shape[1:]), dtype=np.float32)
        if n == 1 or c.jobs == 1:
            for i in range(n):
                c.request.infer({0: x[i:i + 1]}, share_inputs=True)
                out[i] = c.request.get_output_tensor(0).data[0]
            return {self._out: self._tensor(out)}
        done_ids: list[int] = []

        def done(request: Any, i: int) -> None:
            out[i] = request.get_output_tensor(0).data[0]
            done_ids.append(i)

        c.queue.set_callback(done)
        for i in range(n):
            c.queue.start_async({0: x[i:i + 1]}, i, share_inputs=True)
        c.queue.wait_all()
        if len(done_ids) != n:
            raise EngineError("OpenVINO inference failed (a request returned no output)")
        return {self._out: self._tensor(out)}

    def _tensor(self, out: np.ndarray) -> torch.Tensor:
        """Segmentation comes out N x H x W x C: returned as the N x C x H x W view of it (channels-last
        strides, no copy); depth N x H x W as it is."""
        t = torch.from_numpy(out)
        return t.permute(0, 3, 1, 2) if self._loaded.task == "segmentation" else t

    def warmup(self, shapes: Iterable[tuple[int, int]] | None = None) -> None:
        """Compile (or load from the cache) the model of every network shape in ``shapes`` (default: the
        checkpoint's fixed shape) and run it once per parallel request (first-run allocations)."""
        fixed = self.spec.preprocess.fixed_shape
        todo = list(shapes) if shapes is not None else ([fixed] if fixed else [])
        for shape in dict.fromkeys(todo):
            for hint in self._hints():
                c = self._compiled_for(shape, hint, quiet=True)
                self.infer(torch.zeros(1 if hint == "LATENCY" else min(max(c.jobs, 2), self.spec.max_batch), 3,
                                       *shape))

    def close(self) -> None:
        """Release the compiled models and their requests. Idempotent."""
        with self._lock:
            self._closed = True
            self._compiled.clear()


def _loaded_from_cache(compiled: Any) -> bool:
    try:
        return bool(compiled.get_property("LOADED_FROM_CACHE"))
    except Exception:
        return False
