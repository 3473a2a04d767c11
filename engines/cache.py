"""On-disk cache for exported graphs and TensorRT plans: keys, paths and atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from engines.base import EngineUsageError, Task


def cache_root(cache_dir: str | Path) -> Path:
    return Path(os.path.expanduser(str(cache_dir)))


def usable_cache_root(cache_dir: str | Path) -> Path:
    """:func:`cache_root`, created if missing and checked to take files: an :class:`EngineUsageError` line
    naming it otherwise (a path that is a file, or under one; no permission), before any export or compile."""
    if not str(cache_dir).strip():  # Path("") is the working directory: compiled models would land there
        raise EngineUsageError("engine cache directory is empty; point engine.cache_dir or DPTSTREAM_CACHE_DIR at "
                               "a writable directory")
    root = cache_root(cache_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=root)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = "it is a file, or under one" if isinstance(e, FileExistsError | NotADirectoryError) else (
            e.strerror or type(e).__name__)
        raise EngineUsageError(f"engine cache directory {str(root)[:200]!r} is not usable ({reason}); point "
                               "engine.cache_dir or DPTSTREAM_CACHE_DIR at a writable directory") from e
    return root


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary file next to ``path``; it replaces ``path`` only if the block succeeds.

    Two processes building the same artefact never leave a half-written file behind: the last rename wins.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: Path, data: bytes | bytearray | memoryview) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "unknown"


@dataclass(frozen=True)
class PlanKey:
    """Everything that invalidates a serialized TensorRT plan.

    A plan is only valid for the exact TensorRT version and GPU model (name + compute capability) it was
    built on, for the graph it was built from (ONNX hash, itself a function of the weights) and for the
    shapes of its optimization profile.
    """

    task: Task
    weights_hash: str
    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"
    precision: str
    min_batch: int
    opt_batch: int
    max_batch: int
    height: int
    width: int

    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def plan_path(self, root: Path) -> Path:
        name = (f"{self.task}-{self.precision}-b{self.min_batch}-{self.opt_batch}-{self.max_batch}"
                f"-{self.width}x{self.height}-{self.digest()[:16]}.plan")
        return root / "tensorrt" / name

    def timing_cache_path(self, root: Path) -> Path:
        """One timing cache per GPU model and TensorRT version, shared by all plans built there."""
        name = (f"timing-{_slug(self.gpu_name)}-sm{self.compute_capability.replace('.', '')}"
                f"-trt{_slug(self.tensorrt_version)}.cache")
        return root / "tensorrt" / name

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "digest": self.digest()}, indent=2, sort_keys=True)
