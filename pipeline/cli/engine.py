"""``dptstream build-engine``: export ONNX and build (or reuse) the cached TensorRT plan for each task.

With ``--onnx-only`` it exports the FP32 and FP16 ONNX graphs (no TensorRT, no GPU needed) and checks both
with onnxruntime on real-content frames: FP32 graph against the torch model, FP16 graph against FP32.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from pipeline.benchmark.onnx_check import onnx_only
from pipeline.cli.common import DebugOpt, QuietOpt
from pipeline.config import ConfigError

log = logging.getLogger("dptstream")


def register(app: typer.Typer) -> None:
    @app.command("build-engine")
    def build_engine_cmd(
        config: Annotated[Path | None, typer.Argument(help="YAML config (models, tasks, engine.batch_size, engine.cache_dir). Flags override it.")] = None,
        model: Annotated[list[str] | None, typer.Option("--model", "-m", help="TASK=ID|PATH. Repeatable.")] = None,
        tasks: Annotated[str | None, typer.Option(help="segmentation,depth (default both).")] = None,
        min_batch: Annotated[int, typer.Option("--min-batch", help="Smallest batch of the optimization profile.")] = 1,
        opt_batch: Annotated[int | None, typer.Option("--opt-batch", help="Batch TensorRT optimises for (default: --max-batch).")] = None,
        max_batch: Annotated[int | None, typer.Option("--max-batch", help="Largest batch (default: engine.batch_size, 8).")] = None,
        precision: Annotated[str, typer.Option(help="fp16 | fp32 (precision of the ONNX graph and plan).")] = "fp16",
        cache_dir: Annotated[str | None, typer.Option("--cache-dir", help="Where ONNX graphs and plans are cached (default ~/.cache/dptstream).")] = None,
        onnx_only_flag: Annotated[bool, typer.Option("--onnx-only", help="Only export the FP32 and FP16 ONNX graphs and check them with onnxruntime (no TensorRT, no GPU).")] = False,
        out_dir: Annotated[Path | None, typer.Option("--out-dir", help="--onnx-only: also copy the graphs here.")] = None,
        threads: Annotated[int | None, typer.Option(help="--onnx-only: onnxruntime intra-op threads.")] = None,
        source_size: Annotated[str | None, typer.Option("--source-size", help="WxH of the source: the network shape of checkpoints that keep the aspect ratio (Depth Anything) depends on it; one plan per shape.")] = None,
        debug: DebugOpt = False,
        quiet: QuietOpt = False,
    ) -> None:
        """Export ONNX and build / cache the TensorRT plan that `run --engine tensorrt` loads."""
        from engines import EngineConfig
        from pipeline.cli.common import build_overrides, setup_logging

        setup_logging(debug, quiet)
        from pipeline.configfile import load_config

        o = build_overrides(None, None, model, tasks, None, None, None, None, None)
        cfg = load_config(config, o)
        if precision not in ("fp16", "fp32"):
            raise ConfigError(f"--precision {precision!r}: use fp16 or fp32")
        max_b = cfg.engine.batch_size if max_batch is None else max_batch
        opt_b = max_b if opt_batch is None else opt_batch
        if not 1 <= min_batch <= opt_b <= max_b:
            raise ConfigError(f"batch sizes must satisfy 1 <= --min-batch <= --opt-batch <= --max-batch, got "
                              f"{min_batch} <= {opt_b} <= {max_b}")
        cache = cache_dir or cfg.engine.cache_dir
        if out_dir is not None:
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"--out-dir {str(out_dir)[:200]!r}: cannot create it ({e.strerror or e})") from e
        src_size = None
        if source_size is not None:
            sw, sep, sh = source_size.lower().partition("x")
            if not sep or not sw.isdigit() or not sh.isdigit() or not (1 <= int(sw) <= 16384 and 1 <= int(sh) <= 16384):
                raise ConfigError(f"--source-size {source_size!r}: use WxH, e.g. 1920x1080")
            src_size = (int(sw), int(sh))
        if onnx_only_flag:
            from engines.loading import load_model

            for task in cfg.tasks:
                loaded = load_model(task, cfg.models[task])
                for line in onnx_only(loaded, cache, out_dir, threads, src_size):
                    print(line)
            return
        from engines import BackendUnavailable
        from engines.tensorrt_engine import build_engine, require_tensorrt

        try:
            require_tensorrt()
        except BackendUnavailable as e:
            reason = str(e).split(" (", 1)[0]
            raise BackendUnavailable(f"build-engine: {reason} (pip install 'dptstream[tensorrt]' on a machine "
                                     "with an NVIDIA GPU; --onnx-only exports and checks the ONNX graphs "
                                     "without it)") from e
        for task in cfg.tasks:
            ecfg = EngineConfig(task=task, model=cfg.models[task], backend="tensorrt", device="cuda",
                                precision=precision, max_batch=max_b, cache_dir=cache)  # type: ignore[arg-type]
            path = build_engine(ecfg, min_batch=min_batch, opt_batch=opt_b, max_batch=max_b, source_size=src_size)
            print(f"{task}: {path}")
