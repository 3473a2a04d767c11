#!/usr/bin/env bash
# The test suite: lint (ruff), types (mypy, including the TensorRT code against tensorrt-stubs) and pytest
# against real redis-server, real RTSP server, real H.264 clips and real HTTP /metrics. Extra args go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
install_system_packages test
install_python_env test
cd "$ROOT"
say "ruff"
"$VENV/bin/ruff" check pipeline engines tests bench tools
say "mypy"
"$VENV/bin/mypy"
say "pytest"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider --durations=15 "$@"
