#!/usr/bin/env bash
# The GPU checks of issues 4 and 12 as ONE run on a lent GPU (an H200 here) that ends within 5 minutes
# (DEADLINE=290 s from the start, set-up included), so that a 15-minute device budget holds a rerun.
# Each step prints ONE verdict line as it ends ("[ 41s] 5/7 tests      PASS  ..."), and the first failed step
# ends the run (fail fast; KEEP_GOING=1 runs the benchmark even after failed tests):
#   1 deps    the carried wheels (.whl/: exactly av redis pydantic pydantic-core annotated-types typing-inspection,
#             checked by tools/gpu_deps.py wheels) installed --no-deps when something is missing, then the gate:
#             every module the run imports (tools/gpu_deps.py check: torch, transformers, numpy, PIL, typer,
#             click, rich, yaml, skimage, scipy, av, redis, pydantic..., onnx, onnxruntime, pytest)
#   2 redis   the machine's redis-server, else one unpacked from carried Debian packages (.whl-deb/)
#   3 env     GPU, driver, versions (env.txt)
#   4 models  random weights of the real DPT-Large-ADE @480 and DPT-Large @384 (shared by tests and bench)
#   5 tests   tests/system/test_gpu.py (FP16 vs FP32 at full size, graph padding, the CUDA-stream pipeline vs
#             CPU, no synchronising call, FP16 outputs per frame, TensorRT plans when TensorRT is importable) and
#             tests/system/test_families_gpu.py (every DPT depth family: FP16 + CUDA graphs per network shape
#             against torch FP32 on CPU); one pytest run, at most 120 s
#   6 bench   `dptstream bench`: fp16-graphs at batch 1/2/4/8/16, fp32 at 1/8, fp16 at 8 (+ tensorrt and
#             tensorrt-fp16softmax at 1/8/16 when importable), e2e with 8 concurrent 1080p clips at batch 8,
#             GPU memory per extra stream, a 30 s RSS soak, the naive transformers loop in FP32 and FP16
#   7 summary throughput against the compute floor (summary.txt)
# Everything lands in $OUT (at most 8 files): steps.log env.txt tests.log bench.log gpu-h200.json summary.txt
# redis.log.
#
# On the device (from the repo root; see docs/gpu.md for preparing .whl and .whl-deb):
#   run(command="bash bench/gpu_check.sh", carry=[".whl", ".whl-deb"], timeout_s=330)
# On a CPU machine, to test the script itself (tiny models, CPU, the whole script in well under 5 minutes):
#   GPU_CHECK_TINY=1 OUT=/tmp/gpu-check bash bench/gpu_check.sh
#
# Environment: OUT (default ./out/gpu-check), GPU_CHECK_TINY (0/1), SOAK_SECONDS (default 30), DEADLINE
# (default 290: seconds from the start after which the benchmark is stopped; its JSON is written after each
# variant, so a run cut short keeps what it measured), KEEP_GOING (0/1), PYTHON (default python3, or .venv's
# python in tiny mode), WORK (checkpoints and clips, default /tmp/dptstream-bench), REDIS_PORT (default 6479),
# REDIS_SERVER (a redis-server binary; set it empty to use the carried .deb files even where one is installed).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
OUT=${OUT:-$ROOT/out/gpu-check}
mkdir -p "$OUT"
TINY=${GPU_CHECK_TINY:-0}
SOAK=${SOAK_SECONDS:-30}
WORK=${WORK:-/tmp/dptstream-bench}
PORT=${REDIS_PORT:-6479}
DEADLINE=${DEADLINE:-290}
KEEP_GOING=${KEEP_GOING:-0}
if [[ -z "${PYTHON:-}" ]]; then
    if [[ "$TINY" == 1 && -x "$ROOT/.venv/bin/python" ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
T0=$(date +%s)
NSTEPS=7
: >"$OUT/steps.log"
status=0
elapsed() { echo $(( $(date +%s) - T0 )); }
note() { echo "[$(printf '%3d' "$(elapsed)")s]       $*" | tee -a "$OUT/steps.log"; }
# verdict N NAME PASS|FAIL|SKIP DETAIL [hard|soft|last]: the one line of a step. A FAIL ends the run: always
# (hard), unless KEEP_GOING=1 (soft), or never (last: the benchmark and summary, so a partial JSON is summarised)
verdict() {
    printf '[%3ds] %d/%d %-8s %-4s  %s\n' "$(elapsed)" "$1" "$NSTEPS" "$2" "$3" "$4" | tee -a "$OUT/steps.log"
    if [[ "$3" == FAIL ]]; then
        status=1
        local mode=${5:-hard}
        if [[ "$mode" == hard || ( "$mode" == soft && "$KEEP_GOING" != 1 ) ]]; then
            note "stopped after step $1 (fail fast; logs in $OUT)"
            exit 1
        fi
    fi
}
left() { local l=$(( DEADLINE - $(elapsed) )); (( l < 5 )) && l=5; echo "$l"; }

# -- 1. Python packages: the carried wheels when something is missing, then every import the run needs -------
if ! "$PYTHON" -c "import av, redis, pydantic" 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        verdict 1 deps FAIL "av/redis/pydantic missing and no wheels in .whl/ (python tools/gpu_deps.py download .whl; docs/gpu.md)"
    fi
    line=$("$PYTHON" tools/gpu_deps.py wheels .whl) || verdict 1 deps FAIL "$line"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl >>"$OUT/steps.log" 2>&1 || verdict 1 deps FAIL "pip install of .whl/*.whl failed (steps.log)"
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    CARRIED="carried $(ls .whl | wc -l) wheels; "
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}   # pipeline/ and engines/ from the tree (no install needed)
export DPTSTREAM_LARGE_DIR=$WORK
line=$("$PYTHON" tools/gpu_deps.py check 2>&1 | tail -1)
if [[ "$line" == PASS* ]]; then verdict 1 deps PASS "${CARRIED:-}${line#PASS: }"; else verdict 1 deps FAIL "${line#FAIL: }"; fi

# -- 2. redis-server: the machine's, else unpacked from the carried .deb files (into /tmp, never into /) -------
REDIS=${REDIS_SERVER-$(command -v redis-server || true)}  # REDIS_SERVER= (empty) forces the .deb route
if [[ -z "$REDIS" ]]; then
    ls .whl-deb/*.deb >/dev/null 2>&1 || verdict 2 redis FAIL "no redis-server and no .whl-deb/*.deb (carry .whl-deb, see docs/gpu.md)"
    rm -rf /tmp/redisroot && mkdir -p /tmp/redisroot/libs
    for d in .whl-deb/*.deb; do dpkg -x "$d" /tmp/redisroot; done
    REDIS=/tmp/redisroot/usr/bin/redis-server
    # supply only the shared libraries this machine lacks
    for lib in $(LD_LIBRARY_PATH= ldd "$REDIS" | awk '/not found/ {print $1}'); do
        found=$(find /tmp/redisroot -name "$lib" | head -1)
        [[ -n "$found" ]] && ln -sf "$found" /tmp/redisroot/libs/"$lib"
    done
    export LD_LIBRARY_PATH=/tmp/redisroot/libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
"$REDIS" --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir /tmp >"$OUT/redis.log" 2>&1 &
REDIS_PID=$!
trap 'kill $REDIS_PID 2>/dev/null' EXIT
for _ in $(seq 50); do
    "$PYTHON" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null && break
    sleep 0.1
done
if kill -0 "$REDIS_PID" 2>/dev/null; then
    verdict 2 redis PASS "redis-server $("$REDIS" --version | awk '{print $3}') on port $PORT"
else
    verdict 2 redis FAIL "redis-server did not start (redis.log)"
fi

# -- 3. what machine this is -----------------------------------------------------------------------------------
{
    date -u +%FT%TZ
    nvidia-smi 2>&1 || echo "no nvidia-smi"
    "$PYTHON" - <<'EOF'
import importlib, platform, sys
import torch
print("python", sys.version.split()[0], platform.platform())
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
for m in ("transformers", "av", "redis", "pydantic", "onnx", "onnxruntime", "tensorrt"):
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as e:
        print(m, "missing:", type(e).__name__)
EOF
} >"$OUT/env.txt" 2>&1
envline=$(grep -E '^(torch|gpu) ' "$OUT/env.txt" | tr '\n' ' ')
if [[ "$TINY" != 1 ]] && ! grep -q "available True" "$OUT/env.txt"; then
    verdict 3 env FAIL "torch sees no CUDA GPU: $envline"
fi
verdict 3 env PASS "$envline"
TRT=0
"$PYTHON" -c "import tensorrt; tensorrt.Builder" 2>/dev/null && TRT=1

if [[ "$TINY" == 1 ]]; then
    BENCH_ARGS=(--device auto --threads 1 --batch-sizes 1,2 --e2e-batch 2 --streams 2 --clip-size 320x180
                --clip-frames 12 --seconds 0.2 --min-calls 2 --warmup 1 --repeat 1 --naive-frames 4
                --soak-seconds "$(( SOAK < 3 ? SOAK : 3 ))")
    TEST_TIMEOUT=150
    verdict 4 models SKIP "tiny mode: the tests and the bench make tiny checkpoints"
else
    # real architectures, random weights: built once, shared by the tests and the benchmark
    if timeout "$(left)" "$PYTHON" - <<EOF >>"$OUT/steps.log" 2>&1
from pathlib import Path
from pipeline.sample import make_checkpoint
for task in ("segmentation", "depth"):
    p = Path("$WORK") / f"dpt-large-{task}-random"
    if not (p / "config.json").exists():
        make_checkpoint(p, task, large=True)
    print("checkpoint", p)
EOF
    then verdict 4 models PASS "random-weight DPT-Large-ADE @480 and DPT-Large @384 in $WORK"
    else verdict 4 models FAIL "checkpoint build failed (steps.log)"
    fi
    VARIANTS=fp16-graphs,fp16,fp32
    VB=(--variant-batches fp32=1,8 --variant-batches fp16=8)
    if [[ "$TRT" == 1 ]]; then
        VARIANTS=$VARIANTS,tensorrt,tensorrt-fp16softmax
        VB+=(--variant-batches tensorrt=1,8,16 --variant-batches tensorrt-fp16softmax=8)
    fi
    BENCH_ARGS=(--random-large --device cuda --variants "$VARIANTS" --batch-sizes 1,2,4,8,16 "${VB[@]}"
                --e2e-variants fp16-graphs --e2e-batch 8 --streams 8 --clip-size 1920x1080 --clip-frames 64
                --seconds 0.5 --min-calls 3 --warmup 2 --repeat 1 --naive-frames 16 --naive-precisions fp32,fp16
                --memory-per-stream --soak-seconds "$SOAK")
    TEST_TIMEOUT=120  # test_gpu.py and test_families_gpu.py; the benchmark gets what is left of the deadline
fi

# -- 5. GPU tests (and their CPU twins) ------------------------------------------------------------------------
(( TEST_TIMEOUT > $(left) )) && TEST_TIMEOUT=$(left)
timeout "$TEST_TIMEOUT" "$PYTHON" -m pytest -x -q -rs -p no:cacheprovider tests/system/test_gpu.py \
    tests/system/test_families_gpu.py -s \
    >"$OUT/tests.log" 2>&1
rc=$?
last=$(grep -E '(passed|failed|error|skipped)' "$OUT/tests.log" | tail -1)
if [[ $rc -eq 0 ]]; then
    verdict 5 tests PASS "${last:-no summary}"
elif [[ $rc -eq 124 ]]; then
    verdict 5 tests FAIL "timed out after ${TEST_TIMEOUT}s (tests.log)" soft
else
    verdict 5 tests FAIL "exit $rc: $(grep -m1 -E '^(FAILED|ERROR)' "$OUT/tests.log" || echo "$last")" soft
fi

# -- 6. benchmark ------------------------------------------------------------------------------------------------
RESULT=$OUT/gpu-h200.json
[[ "$TINY" == 1 ]] && RESULT=$OUT/gpu-check-tiny.json
budget=$(( $(left) - 8 ))  # the summary's few seconds stay inside the deadline
(( budget < 5 )) && budget=5
note "bench (at most ${budget}s): ${BENCH_ARGS[*]}"
timeout "$budget" "$PYTHON" -m pipeline.cli bench "${BENCH_ARGS[@]}" --redis "redis://127.0.0.1:$PORT/0" \
    --work-dir "$WORK" --out "$RESULT" >"$OUT/bench.log" 2>&1
rc=$?
if [[ $rc -eq 0 ]]; then
    verdict 6 bench PASS "$(grep -c '"mode"' "$RESULT") entries in $(basename "$RESULT")"
elif [[ $rc -eq 124 && -f "$RESULT" ]]; then
    verdict 6 bench FAIL "stopped at the deadline; $(basename "$RESULT") keeps $(grep -c '"mode"' "$RESULT") entries (partial)" last
else
    verdict 6 bench FAIL "exit $rc: $(grep -m1 'dptstream: error' "$OUT/bench.log" || tail -1 "$OUT/bench.log")" last
fi

# -- 7. summary: throughput against the compute floor, and the speed-ups of each GPU technique ------------------
if [[ -f "$RESULT" ]] && "$PYTHON" - "$RESULT" >"$OUT/summary.txt" 2>&1 <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
FLOPS = {"segmentation": 856.6e9, "depth": 516.4e9}  # per frame: DPT-Large-ADE at 480², DPT-Large at 384² (auxiliary head skipped)
PEAK = 790e12  # dense FP16 on H100/H200
print("machine:", doc["machine"])
print("versions:", doc["versions"])
rows = [r for r in doc["results"] if r["mode"] == "engine"]
for task in ("segmentation", "depth", "segmentation+depth"):
    for r in sorted((r for r in rows if r["task"] == task), key=lambda r: (r["backend"], r["batch"])):
        flops = sum(FLOPS.get(t, 0.0) for t in task.split("+"))
        floor = PEAK / flops if flops else 0.0
        frac = f"  {r['fps'] / floor:6.1%} of the compute floor" if floor and r["input"][0] in (480, 384) else ""
        print(f"engine {task:19s} {r['backend']:28s} batch {r['batch']:2d}: {r['fps']:8.1f} frames/s  "
              f"p50 {r['latency_ms']['p50']:8.2f} ms  cpu {r.get('cpu_ms_per_frame')} ms/frame{frac}")
        if r.get("tensorrt"):
            print("  tensorrt:", json.dumps(r["tensorrt"]))
for r in doc["results"]:
    if r["mode"] in ("e2e", "naive"):
        keep = {k: r[k] for k in ("mode", "backend", "batch", "streams", "source", "fps", "latency_ms", "frames",
                                  "gpu_mem_peak_mb", "gpu_mem_per_extra_stream_mb", "gpu_mem_peak_one_stream_mb",
                                  "rss_mb", "soak_seconds", "stage_ms", "cpu_ms_per_frame_by_stage", "batch_mean",
                                  "cpu_ms_per_frame") if k in r}
        print(json.dumps(keep))
for r in doc["ratios"]:
    print("ratio", json.dumps(r))
print("notes:", doc.get("notes"))
EOF
then
    cat "$OUT/summary.txt" >>"$OUT/steps.log"
    verdict 7 summary PASS "$(grep -c '^engine ' "$OUT/summary.txt") engine rows, $(grep -c '^ratio ' "$OUT/summary.txt") ratios (summary.txt)"
else
    verdict 7 summary FAIL "no results to summarise" last
fi
note "done in $(elapsed)s (status $status)"
exit $status
