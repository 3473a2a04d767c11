#!/usr/bin/env bash
# Run the main job on a generated sample: a 1280x720 real-content H.264 clip and small random-weight DPT
# checkpoints (no model hub needed), decode -> segmentation + depth -> Redis, then print what was published.
# Real use: dptstream run --source CAMERA_OR_FILE --model segmentation=Intel/dpt-large-ade --model depth=Intel/dpt-large
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
install_system_packages
install_python_env sample
DPT="$VENV/bin/dptstream"
SAMPLE="$ROOT/.cache/sample"

say "generating the sample clip and checkpoints in $SAMPLE (cached)"
"$DPT" sample "$SAMPLE" >/dev/null

# Redis: $REDIS_URL if set, else a local server on 6379, else a private one started here.
if [ -z "${REDIS_URL:-}" ]; then
  if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    REDIS_URL="redis://127.0.0.1:6379/0"
  else
    mkdir -p "$ROOT/.cache/redis"
    redis-server --daemonize yes --port 6390 --bind 127.0.0.1 --save "" --appendonly no \
      --dir "$ROOT/.cache/redis" --logfile "$ROOT/.cache/redis/redis.log" >/dev/null
    for _ in $(seq 50); do redis-cli -p 6390 ping >/dev/null 2>&1 && break; sleep 0.1; done
    REDIS_URL="redis://127.0.0.1:6390/0"
    say "started a private redis-server on port 6390 (stop it with: redis-cli -p 6390 shutdown)"
  fi
fi
export REDIS_URL

say "running the pipeline (Ctrl-C stops reading and drains what was decoded)"
"$DPT" run --source "sample=$SAMPLE/sample.mp4" \
  --model "segmentation=$SAMPLE/dpt-tiny-ade" --model "depth=$SAMPLE/dpt-tiny-depth" \
  --no-resume --metrics-port 0 "$@"

say "latest results in Redis (dptstream show sample -n 3)"
"$DPT" show sample -n 3
