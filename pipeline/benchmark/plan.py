"""What a benchmark run measures: variants (precision, graphs, TensorRT), batch sizes, streams."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config import ConfigError

COMBINED = "segmentation+depth"


VARIANTS = ("fp32", "fp16", "fp16-graphs", "bf16", "bf16-graphs", "tensorrt", "tensorrt-fp16softmax", "ov-fp32", "ov-bf16")
CPU_VARIANTS = ("fp32", "ov-fp32", "ov-bf16")  # torch FP32 and OpenVINO


GPU_BATCHES = "1,2,4,8,16"


CPU_BATCHES = "1,4,8"


# -- small helpers -------------------------------------------------------------------------------------------
# the run's own limits (engine.threads, engine.batch_size): beyond them a thread pool or a batch exhausts the
# process before any measurement (99999 threads made shared libraries fail to map)
MAX_THREADS = 1024
MAX_BATCH = 256


def int_list(text: str, what: str, most: int = MAX_BATCH) -> list[int]:
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not a comma-separated list of integers") from None
    if not out or any(v < 1 or v > most for v in out):
        raise ConfigError(f"{what}: {text!r} needs one or more integers from 1 to {most}")
    return list(dict.fromkeys(out))


def parse_size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) < 16 or int(h) < 16:
        raise ConfigError(f"--clip-size {text!r}: use WxH, e.g. 1280x720")
    return int(w), int(h)


@dataclass(frozen=True)
class Variant:
    """One engine configuration to measure."""

    name: str  # "fp32", "fp16-graphs", "tensorrt", ...
    backend: str  # "torch" | "tensorrt" | "openvino"
    precision: str  # "fp32" | "fp16" | "bf16"
    cuda_graphs: bool
    threads: int | None = None  # torch intra-op threads / OpenVINO's INFERENCE_NUM_THREADS (CPU)
    fp32_softmax: bool = True  # TensorRT: the attention Softmax in float32 (False: FP16, no Casts around it)

    @property
    def label(self) -> str:
        return self.name + (f"-t{self.threads}" if self.threads else "")


def parse_variants(text: str, device: str, threads: list[int] | None) -> list[Variant]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names:
        raise ConfigError(f"--variants: unknown variant {bad[0] if bad else text!r} (use {', '.join(VARIANTS)})")
    out: list[Variant] = []
    for n in names:
        if device == "cpu" and n not in CPU_VARIANTS:
            raise ConfigError(f"--variants {n}: on CPU {', '.join(CPU_VARIANTS)} are measured (torch FP16/BF16 and "
                              "TensorRT need CUDA)")
        if device != "cpu" and n.startswith("ov-"):
            raise ConfigError(f"--variants {n}: OpenVINO variants run on CPU (--device cpu)")
        if n.startswith("ov-"):
            for t in threads or [None]:  # type: ignore[list-item]
                out.append(Variant(n, "openvino", n.removeprefix("ov-"), False, t))
            continue
        if n.startswith("tensorrt"):
            out.append(Variant(n, "tensorrt", "fp16", False, fp32_softmax=n == "tensorrt"))
            continue
        prec, _, graphs = n.partition("-")
        for t in threads or [None]:  # type: ignore[list-item]
            out.append(Variant(n, "torch", prec, graphs == "graphs", t))
    return out


# -- the benchmark ------------------------------------------------------------------------------------------
@dataclass
class Plan:
    tasks: list[str]
    device: str
    variants: list[Variant]
    batches: list[int]
    e2e_batches: list[int]
    e2e_variants: list[str]
    streams: int
    modes: list[str]
    redis_url: str
    min_seconds: float
    min_calls: int
    warmup: int
    naive_frames: int
    soak_seconds: float
    cache_dir: str
    memory_streams: bool
    repeat: int = 1
    naive_threads: list[int | None] = field(default_factory=lambda: [None])
    families: bool = False  # engine-only rows for every tiny depth family (pipeline.checkpoints)
    random_large: bool = False  # plus a Depth-Anything-V2-Large-sized depth model
    naive_precisions: list[str] = field(default_factory=lambda: ["fp32"])  # fp32 and fp16 on CUDA
    variant_batches: dict[str, list[int]] = field(default_factory=dict)  # engine-only batch sizes per variant

    def batches_for(self, variant: str) -> list[int]:
        return self.variant_batches.get(variant, self.batches)


def parse_e2e_variants(text: str | None, names: list[str], tensorrt_ok: bool) -> list[str]:
    """``--e2e-variants``: variants among those measured (``names``); default the fastest kind measured. A name
    not measured is a usage error, not an end-to-end run silently left out."""
    known = list(dict.fromkeys(names))
    out: list[str]
    if text is None:
        out = [next(n for n in ("tensorrt", "fp16-graphs", "bf16-graphs", "fp16", "fp32", "bf16", "ov-bf16",
                                "ov-fp32") if n in known)]
    else:
        out = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in out if v not in known]
        if bad or not out:
            raise ConfigError(f"--e2e-variants {text!r}: {bad[0] if bad else 'no variant'} is not a variant being "
                              f"measured ({', '.join(known)}); name one of them, or add it to --variants")
    if "tensorrt" in out and not tensorrt_ok:
        out = [v for v in out if v != "tensorrt"] or ["fp16-graphs" if "fp16-graphs" in known else known[0]]
    return out


def parse_variant_batches(items: list[str] | None, known: list[str]) -> dict[str, list[int]]:
    """``--variant-batches fp32=1,8`` (repeatable): engine-only batch sizes for one variant."""
    known = list(dict.fromkeys(known))  # one name per variant, whatever the thread counts measured
    out: dict[str, list[int]] = {}
    for item in items or []:
        name, sep, sizes = item.partition("=")
        name = name.strip()
        if not sep or name not in known:
            raise ConfigError(f"--variant-batches {item!r}: use VARIANT=SIZES with a variant being measured "
                              f"({', '.join(known)}), e.g. fp32=1,8")
        out[name] = int_list(sizes, f"--variant-batches {name}")
    return out
