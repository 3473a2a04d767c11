"""The layer rule of ``pipeline/`` (see its ``__init__`` docstring), checked on the import graph by tools/layers.py."""

from __future__ import annotations

from pathlib import Path

from tools.layers import check

ROOT = Path(__file__).resolve().parents[2]


def test_tree_keeps_the_layer_rule() -> None:
    assert check(ROOT) == []


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


LAYERS = (("core",), ("app", "app.base"), ("app.sinks", "app.sources"), ("app.cli",))


def _problems(tmp_path: Path, files: dict[str, str]) -> list[str]:
    base = {"core/__init__.py": "", "app/__init__.py": "", "app/base.py": "import core\n",
            "app/sinks/__init__.py": "from app.sinks.redis import Sink\n",
            "app/sinks/redis.py": "from app.base import x\nclass Sink: ...\n",
            "app/sources/__init__.py": "", "app/cli/__init__.py": "import app.sinks\n"}
    _write(tmp_path, base | files)
    return check(tmp_path, packages=("core", "app"), layers=LAYERS)


def test_fake_package_without_problems_passes(tmp_path: Path) -> None:
    assert _problems(tmp_path, {}) == []


def test_function_local_cycle_is_found(tmp_path: Path) -> None:
    probs = _problems(tmp_path, {"app/sources/__init__.py": "def f():\n    from app.sources import live\n",
                                 "app/sources/live.py": "import app.sources\n"})
    assert "import cycle: app.sources <-> app.sources.live" in probs


def test_upward_and_sibling_imports_are_found(tmp_path: Path) -> None:
    probs = _problems(tmp_path, {"app/base.py": "def f():\n    import app.cli\n",
                                 "app/sources/__init__.py": "from app.sinks import Sink\n"})
    assert any(p.startswith("app.base:2 imports app.cli, a higher layer") for p in probs)
    assert any(p.startswith("app.sources:1 imports app.sinks, a sibling layer") for p in probs)


def test_computed_and_literal_dynamic_imports_are_followed(tmp_path: Path) -> None:
    probs = _problems(tmp_path, {
        "app/cli/__init__.py": "for m in ('app.cli.extra',):\n    __import__(m)\n",
        "app/cli/extra.py": "import importlib\nimportlib.import_module('app.cli')\n"})
    assert "app.cli:2 uses __import__(): import modules by name, listed explicitly" in probs
    assert "import cycle: app.cli <-> app.cli.extra" in probs


def test_private_names_and_unmapped_modules_are_found(tmp_path: Path) -> None:
    probs = _problems(tmp_path, {"app/cli/__init__.py": "from app.sinks.redis import _helper\n",
                                 "app/stray.py": "import core\n"})
    assert "app.cli:1 imports the private name _helper of app.sinks.redis" in probs
    assert any("app.stray" in p and "outside the layer map" in p for p in probs)
