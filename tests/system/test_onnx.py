"""ONNX export: FP32 and mixed-precision FP16 graphs checked against torch with onnxruntime (CPU).

Tiny random-weight DPT checkpoints (``initializer_range=0.1``, so outputs are of order 1 and masks hold
tens of classes) on real-content frames, preprocessed exactly as the pipeline does.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from engines.base import EngineError  # noqa: E402
from engines.loading import LoadedModel, load_model  # noqa: E402
from engines.onnx_export import (  # noqa: E402
    OnnxRuntimeEngine,
    export_onnx,
    onnx_cache_path,
    onnx_sha256,
)
from engines.preprocess import Preprocessor  # noqa: E402

SIZE = 96
FRAME_W, FRAME_H = 320, 180
FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedModel]:
    from pipeline.sample import make_checkpoint

    d = tmp_path_factory.mktemp("onnx-models")
    return {task: load_model(task, str(make_checkpoint(d / task, task, image_size=SIZE)))  # type: ignore[arg-type]
            for task in ("segmentation", "depth")}


@pytest.fixture(scope="module")
def frames(models: dict[str, LoadedModel]) -> torch.Tensor:
    """9 network inputs: three panning shots over each of three photographs."""
    from pipeline.sample import make_frames

    images = [torch.tensor(f) for seed in range(3) for f in make_frames(3, FRAME_W, FRAME_H, seed=seed)]
    return Preprocessor(models["segmentation"].preprocess)(images)


@pytest.fixture(scope="module")
def graphs(models: dict[str, LoadedModel],
           tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    d = tmp_path_factory.mktemp("onnx-graphs")
    return {(task, prec): export_onnx(models[task], d / f"{task}-{prec}.onnx", prec)  # type: ignore[arg-type]
            for task in ("segmentation", "depth") for prec in ("fp32", "fp16")}


def _torch(loaded: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return loaded.module(x)  # type: ignore[no-any-return]


def _masks(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Masks as the pipeline makes them (bilinear logits resize, then argmax), and at the network grid."""
    resized = F.interpolate(logits, size=(FRAME_H, FRAME_W), mode="bilinear", align_corners=False)
    return {"frame": resized.argmax(1), "grid": logits.argmax(1)}


def _agreement(ref: torch.Tensor, out: torch.Tensor) -> dict[str, list[float]]:
    a, b = _masks(ref), _masks(out)
    return {k: [(a[k][i] == b[k][i]).float().mean().item() for i in range(ref.shape[0])] for k in a}


def _tensor_types(model: Any) -> dict[str, int]:
    """Element type of every tensor in the graph (after ONNX shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    for node in g.node:  # Constant nodes carry their type in the attribute
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


@pytest.mark.slow
def test_fp32_graph_reproduces_torch(models: dict[str, LoadedModel], frames: torch.Tensor,
                                     graphs: dict[tuple[str, str], Path]) -> None:
    ref = _torch(models["segmentation"], frames)
    out = OnnxRuntimeEngine(graphs["segmentation", "fp32"], threads=2).run(frames)
    assert out.shape == ref.shape and out.dtype == torch.float32
    agree = _agreement(ref, out)
    print("fp32 mask agreement per frame:", {k: [round(v, 5) for v in vs] for k, vs in agree.items()})
    assert min(agree["frame"]) >= 0.999 and min(agree["grid"]) >= 0.999
    assert len(torch.unique(ref.argmax(1))) >= 10  # the masks hold real structure, not one class


@pytest.mark.slow
def test_fp16_graph_masks_agree_with_torch_fp32(models: dict[str, LoadedModel], frames: torch.Tensor,
                                                graphs: dict[tuple[str, str], Path]) -> None:
    ref = _torch(models["segmentation"], frames)
    out = OnnxRuntimeEngine(graphs["segmentation", "fp16"], threads=2).run(frames)
    assert out.shape == ref.shape and out.dtype == torch.float32
    agree = _agreement(ref, out)
    print("fp16 mask agreement per frame:", {k: [round(v, 5) for v in vs] for k, vs in agree.items()})
    for kind, values in agree.items():
        assert min(values) >= 0.99, (kind, values)


@pytest.mark.slow
def test_depth_graphs_close_to_torch(models: dict[str, LoadedModel], frames: torch.Tensor,
                                     graphs: dict[tuple[str, str], Path]) -> None:
    ref = _torch(models["depth"], frames)
    span = (ref.max() - ref.min()).item()
    assert span > 0.1  # order-1 outputs: FP16 is exercised, not underflowing
    fp32 = OnnxRuntimeEngine(graphs["depth", "fp32"], threads=2).run(frames)
    fp16 = OnnxRuntimeEngine(graphs["depth", "fp16"], threads=2).run(frames)
    assert fp32.shape == fp16.shape == ref.shape == (frames.shape[0], SIZE, SIZE)
    err32, err16 = (fp32 - ref).abs(), (fp16 - ref).abs()
    print(f"depth span {span:.3f}; max abs error fp32 {err32.max():.2e}, fp16 {err16.max():.2e} "
          f"(mean {err16.mean():.2e})")
    assert err32.max() <= 1e-4 * span
    assert err16.max() <= 0.01 * span and err16.mean() <= 0.002 * span
    # the pipeline's depth summaries: medians per frame agree closely
    med_ref, med16 = ref.flatten(1).median(1).values, fp16.flatten(1).median(1).values
    assert torch.allclose(med16, med_ref, atol=0.002 * span)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_dynamic_batch(task: str, precision: str, frames: torch.Tensor,
                       graphs: dict[tuple[str, str], Path]) -> None:
    engine = OnnxRuntimeEngine(graphs[task, precision], threads=2)
    one = [engine.run(frames[i : i + 1]) for i in range(3)]
    three = engine.run(frames[:3])
    assert [o.shape[0] for o in one] == [1, 1, 1] and three.shape[0] == 3
    assert three.shape[1:] == one[0].shape[1:]
    tol = 1e-4 if precision == "fp32" else 2e-2
    assert torch.allclose(torch.cat(one), three, atol=tol, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_graph_interface(task: str, graphs: dict[tuple[str, str], Path]) -> None:
    out_name = "logits" if task == "segmentation" else "depth"
    for precision in ("fp32", "fp16"):
        model = onnx.load(str(graphs[task, precision]))
        onnx.checker.check_model(model)
        (inp,), (out,) = model.graph.input, model.graph.output
        assert inp.name == "pixel_values" and out.name == out_name
        assert inp.type.tensor_type.elem_type == FLOAT and out.type.tensor_type.elem_type == FLOAT
        dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
        assert dims == ["batch", 3, SIZE, SIZE]
        out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
        assert out_dims[0] == "batch" and all(isinstance(v, int) for v in out_dims[1:])
        assert "ArgMax" not in {n.op_type for n in model.graph.node}  # masks are made after resizing
        opset = {o.domain: o.version for o in model.opset_import}[""]
        assert opset == 17


@pytest.mark.slow
@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_fp16_graph_is_half_with_fragile_ops_in_fp32(task: str, graphs: dict[tuple[str, str], Path]) -> None:
    model = onnx.load(str(graphs[task, "fp16"]))
    types = _tensor_types(model)
    nodes = list(model.graph.node)
    half_weights = [t for t in model.graph.initializer if t.data_type == FLOAT16]
    assert sum(onnx.numpy_helper.to_array(t).size for t in half_weights) > 0.9 * sum(
        onnx.numpy_helper.to_array(t).size for t in model.graph.initializer
        if t.data_type in (FLOAT, FLOAT16)
    ), "most weights should be FP16"
    # the heavy ops run in FP16 ...
    for op in ("MatMul", "Conv"):
        ins = [types.get(n.input[0]) for n in nodes if n.op_type == op]
        assert ins and all(t == FLOAT16 for t in ins), (op, ins)
    # ... the numerically fragile ones in FP32
    norms = [n for n in nodes if n.op_type == "LayerNormalization"]
    softmaxes = [n for n in nodes if n.op_type == "Softmax"]
    assert len(norms) >= 8 and len(softmaxes) >= 4  # 4 layers: 2 norms + 1 attention each, + final norm
    for n in norms:
        assert [types.get(i) for i in n.input if i] == [FLOAT] * len([i for i in n.input if i]), n.name
        assert types.get(n.output[0]) == FLOAT
    for n in softmaxes:
        assert types.get(n.input[0]) == FLOAT and types.get(n.output[0]) == FLOAT, n.name
    # FP32 in and out, with a Cast at each edge
    first = [n for n in nodes if "pixel_values" in n.input]
    assert [n.op_type for n in first] == ["Cast"]
    producer = {o: n for n in nodes for o in n.output}
    assert producer[model.graph.output[0].name].op_type == "Cast"


@pytest.mark.slow
def test_fp32_graph_has_no_half_tensors(graphs: dict[tuple[str, str], Path]) -> None:
    types = _tensor_types(onnx.load(str(graphs["segmentation", "fp32"])))
    assert FLOAT16 not in types.values()


@pytest.mark.slow
def test_export_leaves_the_loaded_model_alone(models: dict[str, LoadedModel], frames: torch.Tensor,
                                              graphs: dict[tuple[str, str], Path]) -> None:
    loaded = models["segmentation"]
    assert all(p.dtype == torch.float32 for p in loaded.module.parameters())
    kinds = {type(m).__name__ for m in loaded.module.modules()}
    assert "DPTSelfAttention" in kinds and "_ExplicitSelfAttention" not in kinds and "_Fp32Norm" not in kinds
    assert torch.isfinite(_torch(loaded, frames[:1])).all()


@pytest.mark.slow
def test_onnx_sha256_is_the_file_hash(graphs: dict[tuple[str, str], Path], tmp_path: Path) -> None:
    p = graphs["depth", "fp16"]
    assert onnx_sha256(p) == hashlib.sha256(p.read_bytes()).hexdigest() == onnx_sha256(p)
    assert onnx_sha256(p) != onnx_sha256(graphs["depth", "fp32"])


@pytest.mark.slow
def test_onnx_cache_path_keys(models: dict[str, LoadedModel], tmp_path: Path) -> None:
    seg, depth = models["segmentation"], models["depth"]
    paths = {onnx_cache_path(tmp_path, m, p) for m in (seg, depth) for p in ("fp32", "fp16")}  # type: ignore[arg-type]
    assert len(paths) == 4 and all(p.parent == tmp_path / "onnx" for p in paths)
    assert onnx_cache_path(tmp_path, seg, "fp16") == onnx_cache_path(tmp_path, seg, "fp16")


def test_export_rejects_unknown_precision(tmp_path: Path) -> None:
    class _Loaded:  # export validates before touching the model
        task = "segmentation"

    with pytest.raises(EngineError, match="fp32 and fp16"):
        export_onnx(_Loaded(), tmp_path / "x.onnx", "bf16")  # type: ignore[arg-type]
    assert not (tmp_path / "x.onnx").exists()
