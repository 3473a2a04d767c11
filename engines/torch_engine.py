"""PyTorch backend: FP32 on CPU; FP16/BF16 on CUDA with SDPA attention and CUDA graphs per batch size and shape.

A checkpoint that keeps the source's aspect ratio (Depth Anything) has one network shape per source resolution:
graphs are captured per ``(batch, h, w)``, up front for the shapes given to :meth:`TorchEngine.warmup`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch

from engines.base import OUTPUT_NAME, BackendUnavailable, Engine, EngineConfig, EngineError
from engines.loading import LoadedModel

log = logging.getLogger(__name__)


def graph_batch_sizes(max_batch: int) -> list[int]:
    """Batch sizes to capture: powers of two up to ``max_batch``, plus ``max_batch`` itself."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    sizes.append(max_batch)
    return sizes


def padded_size(n: int, sizes: list[int]) -> int:
    for s in sizes:
        if s >= n:
            return s
    raise ValueError(f"batch of {n} exceeds the largest captured size {sizes[-1]}")


class _Closed:
    """Stands in for the module of a closed engine (whose weights were released)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise EngineError("the torch engine is closed")


class TorchEngine(Engine):
    def __init__(self, loaded: LoadedModel, cfg: EngineConfig) -> None:
        device = cfg.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable("--device cuda was asked for, but torch sees no CUDA GPU")
        precision = cfg.precision
        if precision == "auto":
            precision = "fp16" if device.startswith("cuda") else "fp32"
        if device == "cpu" and precision != "fp32":
            log.warning("%s on CPU is slow and inexact; using fp32", precision)
            precision = "fp32"
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        if device == "cpu" and cfg.threads:
            # Default: torch's (all cores). On a quiet 2-core machine that gave the best end-to-end rate;
            # threads = cores - 1 keeps the engine busiest relative to its own speed and holds up better when
            # other work shares the machine (bench/results/cpu-tiny.json has both).
            torch.set_num_threads(cfg.threads)
        self._module: Any = loaded.module.to(device=device, dtype=dtype).eval()
        for p in self._module.parameters():
            p.requires_grad_(False)
        if cfg.compile:
            self._module = torch.compile(self._module, mode="max-autotune-no-cudagraphs")
        self._out = OUTPUT_NAME[loaded.task]
        self._device = torch.device(device)
        self._use_graphs = cfg.cuda_graphs and self._device.type == "cuda"
        self._graph_sizes = graph_batch_sizes(cfg.max_batch)
        self._graphs: dict[tuple[int, int, int], tuple[Any, torch.Tensor, torch.Tensor]] = {}
        self._pool: Any = None  # one memory pool shared by every captured graph (they never run concurrently)
        backend = f"torch-{self._device.type}-{precision}" + ("-graphs" if self._use_graphs else "")
        self.spec = loaded.engine_spec(backend, str(self._device), dtype, cfg.max_batch)
        if self._use_graphs:
            # capture now, before any pipeline thread runs: a capture in the middle of a run would stall it,
            # and other threads' CUDA calls during a capture are what makes captures fail
            self.warmup()

    def _graph_for(self, n: int, shape: tuple[int, int]) -> tuple[Any, torch.Tensor, torch.Tensor]:
        key = (n, *shape)
        if key not in self._graphs:
            if self._graphs:
                log.info("capturing CUDA graphs for a new %s input shape %dx%d, batch %d",
                         self.spec.task, shape[1], shape[0], n)
            static_in = torch.zeros(n, 3, *shape, device=self._device, dtype=self.spec.dtype)
            stream = torch.cuda.current_stream(self._device)
            side = torch.cuda.Stream(self._device)
            side.wait_stream(stream)
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(2):  # warm up (cuDNN / SDPA algorithm selection) outside the graph
                    self._module(static_in)
            stream.wait_stream(side)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            # thread_local: CUDA calls made meanwhile by other threads (another engine, a stage) are allowed
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"), \
                    torch.inference_mode():
                static_out = self._module(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        return self._graphs[key]

    def warmup(self, shapes: Iterable[tuple[int, int]] | None = None) -> None:
        """On CUDA, before frames flow: capture a graph per batch size and network shape, largest batch first
        (the smaller ones reuse its pool's memory), or without graphs run the largest batch once per shape
        (cuDNN/SDPA algorithm selection, lazy kernel loading, the allocator's first blocks). ``shapes`` default
        to the checkpoint's one fixed shape (none if it keeps the aspect ratio: pass the shapes of the streams,
        :meth:`EngineSpec.network_shape`). Nothing to do on CPU."""
        if self._device.type != "cuda":
            return
        fixed = self.spec.preprocess.fixed_shape
        todo = list(shapes) if shapes is not None else ([fixed] if fixed else [])
        for shape in dict.fromkeys(todo):
            if self._use_graphs:
                for n in sorted(self._graph_sizes, reverse=True):
                    self._graph_for(n, shape)
            else:
                x = torch.zeros(self.spec.max_batch, 3, *shape, device=self._device, dtype=self.spec.dtype)
                self.infer(x)
        torch.cuda.current_stream(self._device).synchronize()

    @property
    def graph_sizes(self) -> list[int]:
        """Batch sizes with a captured graph (a partial batch runs padded to the next one)."""
        return sorted({n for n, _, _ in self._graphs})

    @property
    def graph_shapes(self) -> list[tuple[int, int]]:
        """Network shapes ``(h, w)`` with captured graphs."""
        return sorted({(h, w) for _, h, w in self._graphs})

    @torch.inference_mode()
    def infer(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        n = batch.shape[0]
        if n > self.spec.max_batch:
            outs = [self.infer(batch[i : i + self.spec.max_batch]) for i in range(0, n, self.spec.max_batch)]
            return {self._out: torch.cat([o[self._out] for o in outs], dim=0)}
        x = batch.to(self._device, self.spec.dtype, non_blocking=True)
        if self._use_graphs:
            size = padded_size(n, self._graph_sizes)
            graph, static_in, static_out = self._graph_for(size, (int(x.shape[-2]), int(x.shape[-1])))
            static_in[:n].copy_(x)  # rows n..size-1 keep stale inputs: their outputs are never read
            graph.replay()
            # a copy: the static output buffer is overwritten by the next replay. In the engine's dtype: an
            # FP32 upcast here would be 138 MB per frame of 150 x 480 x 480 logits, resized right after anyway
            return {self._out: static_out[:n].clone()}
        return {self._out: self._module(x)}

    def close(self) -> None:
        """Release the captured graphs, their memory pool and the module (its GPU weights). Idempotent."""
        self._graphs.clear()
        self._pool = None
        self._module = _Closed()
