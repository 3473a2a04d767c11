"""The GPU check's dependency gate and the wheels to carry to the device machine (stdlib only).

    python tools/gpu_deps.py check          every import a `bench/gpu_check.sh` run needs; one line, exit 1 if any fails
    python tools/gpu_deps.py wheels DIR     DIR holds exactly the wheels to carry (nothing that shadows the image)
    python tools/gpu_deps.py download DIR   pip-download exactly those wheels (cp312, manylinux x86-64), at the
                                            versions installed here (the ones the tests ran with)

The H200 machine's image has torch, transformers, numpy, pillow, scikit-image, scipy, typer, rich, click,
pyyaml, prometheus-client, pytest, onnx and onnxruntime; it lacks av, redis and pydantic (with pydantic-core,
annotated-types, typing-inspection). Those six are carried and installed with ``--no-deps`` into a directory
put ahead of the image's packages: a carried numpy or typing-extensions would shadow the image's own, which
its torch was built against, so the ``wheels`` check refuses any other wheel.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

# import name -> distribution, for everything the GPU check imports (pipeline, engines, tests/system/test_gpu.py,
# tests/support, the benchmark); tests/unit/test_gpu_deps.py keeps this in step with the code
MODULES: dict[str, str] = {
    "torch": "torch", "transformers": "transformers", "huggingface_hub": "huggingface-hub",
    "safetensors": "safetensors", "numpy": "numpy",
    "av": "av", "redis": "redis", "pydantic": "pydantic", "pydantic_core": "pydantic-core",
    "annotated_types": "annotated-types", "typing_inspection": "typing-inspection",
    "typing_extensions": "typing-extensions", "PIL": "pillow", "typer": "typer", "click": "click", "rich": "rich",
    "yaml": "pyyaml", "skimage": "scikit-image", "scipy": "scipy", "prometheus_client": "prometheus-client",
    "pytest": "pytest", "onnx": "onnx", "onnxruntime": "onnxruntime",
}
# imported by the code but not needed by the GPU check (the run says what it skips without them)
OPTIONAL: dict[str, str] = {"tensorrt": "the tensorrt bench variants and TensorRT tests are skipped",
                            "gi": "GStreamer, only for the RTSP tests, which the GPU check does not run",
                            "aiohttp": "only for `dptstream view`, which the GPU check does not run",
                            "openvino": "the CPU engine; on a GPU, auto picks TensorRT or torch"}
# exactly what the H200 image lacks
CARRY = ("av", "redis", "pydantic", "pydantic-core", "annotated-types", "typing-inspection")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check() -> int:
    missing: list[str] = []
    for module in MODULES:
        try:
            importlib.import_module(module)
        except Exception as e:  # ImportError, or a broken install (a wrong typing-extensions for pydantic)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            missing.append(f"{module} ({MODULES[module]}: {type(e).__name__}: {first})")
    if missing:
        print(f"FAIL: {len(missing)} of {len(MODULES)} imports fail: {'; '.join(missing)}. Carry their wheels in "
              ".whl/ (python tools/gpu_deps.py download .whl; docs/gpu.md)")
        return 1
    import torch

    facts = [f"{d} {_version(d)}" for d in ("torch", "transformers", "av", "redis", "pydantic", "typing-extensions")]
    cuda = f"cuda {torch.version.cuda}, GPU {'yes' if torch.cuda.is_available() else 'no'}"
    optional = []
    for module, why in OPTIONAL.items():
        try:
            importlib.import_module(module)
        except Exception:
            optional.append(f"no {module}: {why}")
    print(f"PASS: all {len(MODULES)} imports ({', '.join(facts)}; {cuda})" + (f"; {'; '.join(optional)}"
                                                                            if optional else ""))
    return 0


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def wheel_dists(directory: Path) -> dict[str, str]:
    """``{normalised distribution: file name}`` of the wheels in ``directory``."""
    return {_norm(p.name.split("-")[0]): p.name for p in sorted(directory.glob("*.whl"))}


def wheels(directory: Path) -> int:
    found = wheel_dists(directory)
    extra = sorted(set(found) - {_norm(c) for c in CARRY})
    lacking = sorted({_norm(c) for c in CARRY} - set(found))
    if extra:
        print(f"FAIL: {directory} holds {', '.join(found[e] for e in extra)}: it would shadow the image's own "
              f"package; carry exactly {', '.join(CARRY)}")
        return 1
    if lacking:
        print(f"FAIL: {directory} lacks wheels for {', '.join(lacking)} (python tools/gpu_deps.py download {directory})")
        return 1
    print(f"PASS: {', '.join(found[_norm(c)] for c in CARRY)}")
    return 0


def download(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    pins = [f"{d}=={importlib.metadata.version(d)}" for d in CARRY]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(directory),
           "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
           "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", *pins]
    print("+", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd)
    return rc or wheels(directory)


def main(argv: list[str]) -> int:
    if argv[:1] == ["check"] and len(argv) == 1:
        return check()
    if argv[:1] in (["wheels"], ["download"]) and len(argv) == 2:
        return (wheels if argv[0] == "wheels" else download)(Path(argv[1]))
    print("usage: gpu_deps.py check | wheels DIR | download DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
