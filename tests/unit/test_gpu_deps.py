"""The GPU check's dependency gate covers every import the run needs."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tools import gpu_deps

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"pipeline", "engines", "tests", "tools", "__future__"}


def _third_party_imports(paths: list[Path]) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_the_gate_checks_every_import_of_the_code_the_run_uses() -> None:
    paths = [*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "engines").rglob("*.py"), *(ROOT / "tests/support").rglob("*.py"),
             ROOT / "tests/system/test_gpu.py", ROOT / "tests/conftest.py"]
    imports = _third_party_imports(paths)
    unchecked = {m: where for m, where in imports.items() if m not in gpu_deps.MODULES and m not in gpu_deps.OPTIONAL}
    assert not unchecked, f"imports the GPU check's gate does not check: {unchecked}"
    for needed in ("PIL", "typer", "click", "rich", "yaml", "skimage", "scipy", "av", "redis", "pydantic"):
        assert needed in gpu_deps.MODULES


def test_the_script_runs_the_gate(tmp_path: Path) -> None:
    script = (ROOT / "bench/gpu_check.sh").read_text()
    assert "tools/gpu_deps.py check" in script and "tools/gpu_deps.py wheels" in script
    assert "tests/system/test_gpu.py" in script


def test_the_script_runs_every_gpu_test_file() -> None:
    """Every system test file marked ``gpu`` (they skip without CUDA) is in the script's pytest step."""
    script = (ROOT / "bench/gpu_check.sh").read_text()
    gpu_files = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tests/system").glob("test_*.py")
                       if "pytest.mark.gpu" in p.read_text())
    assert "tests/system/test_families_gpu.py" in gpu_files
    missing = [f for f in gpu_files if f not in script]
    assert not missing, f"bench/gpu_check.sh does not run {missing}"


def _touch(d: Path, *names: str) -> None:
    for n in names:
        (d / n).write_bytes(b"")


CARRIED = ("av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl", "redis-8.1.0-py3-none-any.whl",
           "pydantic-2.14.4-py3-none-any.whl", "pydantic_core-2.50.5-cp312-cp312-manylinux2014_x86_64.whl",
           "annotated_types-0.8.0-py3-none-any.whl", "typing_inspection-0.4.5-py3-none-any.whl")


def test_wheels_are_exactly_the_missing_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _touch(tmp_path, *CARRIED)
    assert gpu_deps.wheels(tmp_path) == 0
    _touch(tmp_path, "numpy-2.4.6-cp312-cp312-manylinux_2_28_x86_64.whl")
    assert gpu_deps.wheels(tmp_path) == 1
    assert "numpy-2.4.6" in capsys.readouterr().out.splitlines()[-1]
    (tmp_path / "numpy-2.4.6-cp312-cp312-manylinux_2_28_x86_64.whl").unlink()
    (tmp_path / CARRIED[0]).unlink()
    assert gpu_deps.wheels(tmp_path) == 1
    assert "lacks wheels for av" in capsys.readouterr().out


def test_check_passes_here_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_deps.check() == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("PASS") and "\n" not in out
