"""Cost of zones: end-to-end frames/s (decode -> Redis) with 0 zones and with N zones x 2 rules per stream.

The same CPU bench inputs as ``dptstream bench`` (a generated 1280x720 96-frame real-content clip, the tiny
checkpoints, 2 concurrent streams, batch 8), one set of engines loaded and warmed once, then the two
configurations alternate (``--repeat`` runs each) through the full :class:`pipeline.runtime.Pipeline` into a
private redis-server; medians are reported with their ratio (target >= 0.95).

    .venv/bin/python bench/zones.py                       # -> bench/results/zones-cpu.json
    .venv/bin/python bench/zones.py --zones 8 --repeat 5 --out /tmp/z.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scaling import start_redis  # noqa: E402


def zones_config(n: int) -> dict[str, Any]:
    """``n`` zones tiling the frame in overlapping bands (each ~1/4 of the frame), two coverage rules each."""
    zones, rules = [], []
    for i in range(n):
        x0 = (i % 4) * 0.22
        y0 = (i // 4 % 2) * 0.4
        poly = [[x0, y0], [x0 + 0.34, y0 + 0.02], [x0 + 0.32, y0 + 0.58], [x0 + 0.02, y0 + 0.56]]
        zones.append({"name": f"z{i}", "polygon": [[round(x, 3), round(y, 3)] for x, y in poly]})
        rules.append({"name": f"z{i}-people", "zone": f"z{i}", "classes": ["person", "car"], "min_coverage": 0.02,
                      "for_frames": 3, "clear_frames": 5})
        rules.append({"name": f"z{i}-blocked", "zone": f"z{i}", "classes": ["wall", "floor", "building"],
                      "min_coverage": 0.3, "for_frames": 2, "clear_frames": 2})
    return {"zones": zones, "rules": rules}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zones", type=int, default=8, help="zones per stream in the measured configuration")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each configuration (alternating)")
    ap.add_argument("--streams", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--clip-frames", type=int, default=96)
    ap.add_argument("--work-dir", type=Path, default=Path("~/.cache/dptstream/bench").expanduser())
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/zones-cpu.json")
    args = ap.parse_args()

    import engines as eng
    from pipeline.benchmark.e2e import run_e2e
    from pipeline.benchmark.engine import engine_config_for, prepare_inputs
    from pipeline.benchmark.plan import Variant
    from pipeline.benchmark.results import machine_info, versions

    tasks = ["segmentation", "depth"]
    inp = prepare_inputs(args.work_dir, tasks, {}, False, None, (1280, 720), args.clip_frames)
    variant = Variant("fp32", "torch", "fp32", False)
    loaded = {t: eng.create_engine(engine_config_for(t, inp.models[t], variant, "cpu", args.batch,
                                                     "~/.cache/dptstream")) for t in tasks}
    base = {"tasks": tasks, "models": dict(inp.models), "engine": {"device": "cpu"}}
    with_zones = {**base, **zones_config(args.zones)}
    runs: dict[str, list[float]] = {"0": [], str(args.zones): []}
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis(Path(tmp))
        try:
            run_e2e(loaded, base, inp.warm_clip, args.streams, args.batch, url, "zb-warm", None)
            run_e2e(loaded, with_zones, inp.warm_clip, args.streams, args.batch, url, "zb-warmz", None)
            for i in range(args.repeat):
                order = [("0", base), (str(args.zones), with_zones)]
                if i % 2:
                    order.reverse()  # alternate which goes first, so drift does not favour one
                for key, cfg in order:
                    r = run_e2e(loaded, cfg, inp.clip, args.streams, args.batch, url, f"zb-{key}-{i}", None)
                    runs[key].append(round(r.fps, 2))
                    print(f"run {i + 1}/{args.repeat} zones={key}: {r.fps:.2f} frames/s "
                          f"(postprocess {r.stage_ms.get('postprocess_ms', 0):.2f} ms/frame)", flush=True)
        finally:
            proc.terminate()
            proc.wait(10)
    fps0 = statistics.median(runs["0"])
    fpsn = statistics.median(runs[str(args.zones)])
    out = {
        "what": f"end-to-end frames/s, 0 vs {args.zones} zones x 2 rules per stream",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python bench/zones.py " + " ".join(sys.argv[1:]),
        "clip": {"width": inp.width, "height": inp.height, "frames": inp.frames},
        "streams": args.streams, "batch": args.batch, "tasks": tasks, "models": inp.model_names,
        "zones": args.zones, "rules": 2 * args.zones,
        "fps_runs": runs, "fps_median": {"0": fps0, str(args.zones): fpsn},
        "ratio": round(fpsn / fps0, 3) if fps0 else None, "target_ratio": 0.95,
        "machine": machine_info(), "versions": versions(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"0 zones {fps0:.2f} frames/s, {args.zones} zones {fpsn:.2f} frames/s: ratio {out['ratio']} "
          f"-> {args.out}")
    for e in loaded.values():
        e.close()


if __name__ == "__main__":
    main()
