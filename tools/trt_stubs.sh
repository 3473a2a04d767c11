#!/usr/bin/env bash
# Install TensorRT's type stubs into DIR (not into the venv) and fix them so that they parse.
#
#   tools/trt_stubs.sh DIR        then: MYPYPATH=DIR python -m mypy engines/tensorrt_engine.py
#
# The stubs go to a separate directory on purpose: installed into the venv, tensorrt-stubs makes an empty,
# importable ``tensorrt`` package, and the runtime would believe TensorRT is installed.
# PYTHON (default: .venv/bin/python if present, else python3) runs pip and the fixer.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
DIR=$1
VERSION=10.13.0.35.1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi

if [[ ! -f "$DIR/tensorrt_stubs-$VERSION.dist-info/METADATA" ]]; then
    mkdir -p "$DIR"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
        --target "$DIR" "tensorrt-stubs==$VERSION"
fi
"$PYTHON" "$HERE/fix_trt_stubs.py" "$DIR"
