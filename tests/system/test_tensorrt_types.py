"""The TensorRT backend, checked without TensorRT: type-checked against TensorRT's stubs, plus its pure parts.

TensorRT cannot be installed on these machines, so the code in ``engines/tensorrt_engine.py`` is checked by
mypy against ``tensorrt-stubs`` (installed into ``.cache/trt-stubs`` by ``tools/trt_stubs.sh``, never into
the venv). Errors inside the generated stubs themselves are filtered out.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engines.base import BackendUnavailable, EngineConfig, EngineError
from engines.cache import PlanKey

ROOT = Path(__file__).resolve().parents[2]
STUBS = ROOT / ".cache" / "trt-stubs"
MYPY_CACHE = ROOT / ".cache" / "mypy-trt"
ENGINE_FILE = "engines/tensorrt_engine.py"
_ERROR = re.compile(r"^(?P<path>[^:\n]+):(?P<line>\d+):(?:\d+:)? error: (?P<msg>.*)$", re.MULTILINE)


def _tensorrt_installed() -> bool:
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder")


@pytest.fixture(scope="module")
def stubs() -> Path:
    if not (STUBS / "tensorrt" / "__init__.pyi").exists():
        proc = subprocess.run(["bash", str(ROOT / "tools" / "trt_stubs.sh"), str(STUBS)],
                              capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable})
        if proc.returncode != 0 and not (STUBS / "tensorrt" / "__init__.pyi").exists():
            pytest.skip(f"tensorrt-stubs not installable here: {proc.stderr.strip().splitlines()[-1:]}")
    else:  # present: make sure the fixes are applied (idempotent)
        subprocess.run([sys.executable, str(ROOT / "tools" / "fix_trt_stubs.py"), str(STUBS)], check=True)
    return STUBS


def _mypy(stubs: Path, *targets: str) -> tuple[int, str]:
    try:
        import mypy  # noqa: F401
    except ImportError:
        pytest.skip("mypy is not installed")
    env = {**os.environ, "MYPYPATH": str(stubs)}
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(MYPY_CACHE), "--no-error-summary",
         "--show-error-codes", *targets],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode in (0, 1), f"mypy crashed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.returncode, proc.stdout


def _errors_in(output: str, path: str) -> list[str]:
    want = os.path.normpath(path)
    return [m.group(0) for m in _ERROR.finditer(output) if os.path.normpath(m["path"]) == want]


@pytest.mark.slow
def test_tensorrt_engine_type_checks_against_stubs(stubs: Path) -> None:
    _, out = _mypy(stubs, ENGINE_FILE)
    assert _errors_in(out, ENGINE_FILE) == []


@pytest.mark.slow
def test_stub_check_catches_api_misuse(stubs: Path, tmp_path: Path) -> None:
    """The check above is only worth something if the stubs are really used: misuse must be reported."""
    bad = tmp_path / "trt_misuse.py"
    bad.write_text(textwrap.dedent("""
        import tensorrt as trt

        def build(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig) -> None:
            plan: int = builder.build_serialized_network(network, config)
            ctx = trt.Runtime(trt.Logger()).deserialize_cuda_engine(b"").create_execution_context()
            ctx.execute_async_v3("not a stream handle")
            ctx.set_tensor_adress("x", 0)
    """))
    _, out = _mypy(stubs, str(bad))
    # by file name: mypy's cache may report a module it has seen before under an earlier tmp path
    errors = "\n".join(m.group(0) for m in _ERROR.finditer(out) if Path(m["path"]).name == bad.name)
    assert '"IHostMemory", variable has type "int"' in errors
    assert "execute_async_v3" in errors
    assert "set_tensor_adress" in errors


def test_module_imports_without_tensorrt() -> None:
    import engines.tensorrt_engine as m

    assert hasattr(m, "TensorRTEngine") and hasattr(m, "build_engine")


@pytest.mark.skipif(_tensorrt_installed(), reason="TensorRT is installed")
def test_missing_tensorrt_is_one_clear_line(tmp_path: Path) -> None:
    from engines import tensorrt_available
    from engines.tensorrt_engine import build_engine, require_tensorrt

    assert not tensorrt_available()  # the stubs must never be importable from the venv
    with pytest.raises(BackendUnavailable) as info:
        require_tensorrt()
    assert "\n" not in str(info.value) and "tensorrt" in str(info.value).lower()
    cfg = EngineConfig(task="segmentation", model=str(tmp_path / "none"), backend="tensorrt",
                       cache_dir=str(tmp_path))
    with pytest.raises(BackendUnavailable):  # before touching the (missing) model
        build_engine(cfg, 1, 4, 8)


def test_bad_batch_range_is_rejected() -> None:
    from engines.tensorrt_engine import _check_batches

    _check_batches(1, 4, 8)
    for bad in [(0, 1, 1), (2, 1, 4), (1, 8, 4)]:
        with pytest.raises(EngineError):
            _check_batches(*bad)


def _key(**kw: object) -> PlanKey:
    base = dict(task="segmentation", weights_hash="w", onnx_sha256="o", tensorrt_version="10.13.0",
                gpu_name="NVIDIA H200", compute_capability="9.0", precision="fp16", min_batch=1,
                opt_batch=8, max_batch=8, height=480, width=480)
    return PlanKey(**{**base, **kw})  # type: ignore[arg-type]


def test_plan_key_changes_with_everything_that_invalidates_a_plan(tmp_path: Path) -> None:
    base = _key()
    changed = {
        "weights_hash": "w2", "onnx_sha256": "o2", "tensorrt_version": "11.0.0", "gpu_name": "NVIDIA H100",
        "compute_capability": "8.9", "precision": "fp32", "min_batch": 2, "opt_batch": 4, "max_batch": 16,
        "height": 384, "width": 384,
    }
    assert {f.name for f in dataclasses.fields(PlanKey)} - {"task"} == set(changed)
    paths = {base.plan_path(tmp_path)}
    for field, value in changed.items():
        k = _key(**{field: value})
        assert k.digest() != base.digest(), field
        paths.add(k.plan_path(tmp_path))
    assert len(paths) == len(changed) + 1
    assert _key().digest() == base.digest()  # stable
    p = base.plan_path(tmp_path)
    assert p.parent == tmp_path / "tensorrt" and p.suffix == ".plan"
    # one timing cache per GPU model + TensorRT version, shared across shapes and models
    timing = base.timing_cache_path(tmp_path)
    assert _key(max_batch=16, weights_hash="x").timing_cache_path(tmp_path) == timing
    assert _key(gpu_name="NVIDIA H100").timing_cache_path(tmp_path) != timing
    assert _key(tensorrt_version="11.0.0").timing_cache_path(tmp_path) != timing


def test_attention_report_reads_the_inspector_json() -> None:
    """IEngineInspector output -> is attention fused; checked on hand-written JSON in the
    two shapes TensorRT emits (names only, and DETAILED objects)."""
    import json

    from engines.tensorrt_engine import attention_report

    fused = attention_report(json.dumps({"Layers": [
        {"Name": "/embeddings/Conv", "LayerType": "CaskConvolution", "TacticName": "sm90_xmma_fprop"},
        {"Name": "_gemm_mha_v2_myl0_3", "LayerType": "Myelin", "TacticName": ""},
        {"Name": "/layer.0/output/MatMul", "LayerType": "CaskGemmMatrixMultiply"},
    ], "Bindings": ["pixel_values", "logits"]}))
    assert fused["attention_fused"] is True and fused["fused_attention_layers"] == 1 and fused["layers"] == 3

    split = attention_report(json.dumps({"Layers": [
        "/layer.0/attention/MatMul", "/layer.0/attention/Cast", "/layer.0/attention/Softmax",
        "/layer.0/attention/Cast_1", "/layer.0/attention/MatMul_1",
    ]}))
    assert split["attention_fused"] is False and split["softmax_layers"] == 1

    hidden = attention_report(json.dumps({"Layers": [
        {"Name": "{ForeignNode[/layer.0/attention/MatMul.../layer.0/attention/Softmax]}", "LayerType": "Myelin"},
    ]}))
    assert hidden["attention_fused"] is None and hidden["myelin_layers"] == 1
    assert attention_report(None)["attention_fused"] is None
    assert attention_report("not json")["attention_fused"] is None
