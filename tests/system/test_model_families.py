"""Every supported DPT-family architecture through the engine, against transformers' own path; and every
checkpoint that must be refused, refused in one line.

Tiny random-weight checkpoints of each family (``pipeline.checkpoints``), saved with ``save_pretrained`` and
an image processor configured like the real checkpoint's, loaded through the same path as hub ids. Frames are
decoded from a real-content H.264 clip. The oracle is ``AutoImageProcessor`` + ``AutoModelForDepthEstimation``
+ ``post_process_depth_estimation`` at the same target size.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engines import EngineConfig, ModelLoadError, Preprocessor, create_engine
from engines.loading import load_model
from pipeline.checkpoints import (
    DEPTH_FAMILIES,
    FAMILIES,
    make_family_checkpoint,
    make_glpn_checkpoint,
    make_vit_classifier_checkpoint,
    rename_weight_key,
    truncate_weights,
)
from pipeline.sample import make_clip
from tests.support.families import CORR_MIN, P99_MAX, DepthOracle, agreement
from tests.support.oracle import decode_rgb
from tests.support.servers import RedisServer, cli, one_error_line

pytestmark = pytest.mark.slow
SEG_FAMILIES = tuple(n for n, f in FAMILIES.items() if f.task == "segmentation")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("families")
    return {name: make_family_checkpoint(d / name, name) for name in FAMILIES}


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """Every 3rd frame of a 720p real-content clip, and of a portrait 360x640 one (another network shape)."""
    d = tmp_path_factory.mktemp("family-clips")
    land = decode_rgb(make_clip(d / "land.mp4", frames=12, width=1280, height=720, seed=0))[::3]
    port = decode_rgb(make_clip(d / "port.mp4", frames=6, width=360, height=640, seed=1))[::3]
    return land + port


def _engine(task: str, path: Path):  # type: ignore[no-untyped-def]
    return create_engine(EngineConfig(task=task, model=str(path), backend="torch", device="cpu"))  # type: ignore[arg-type]


@pytest.mark.parametrize("family", DEPTH_FAMILIES)
def test_depth_family_matches_transformers(family: str, ckpts: dict[str, Path], frames: list[np.ndarray]) -> None:
    engine = _engine("depth", ckpts[family])
    spec = engine.spec
    assert spec.depth_kind == ("metric" if FAMILIES[family].metric else "relative_inverse")
    assert spec.metric is FAMILIES[family].metric
    oracle = DepthOracle(ckpts[family])
    pre = Preprocessor(spec.preprocess)
    shapes = set()
    for image in frames:
        h, w = image.shape[:2]
        x = pre([torch.from_numpy(image.copy())])
        ref_in = oracle.network_input(image)
        # the same network shape as the processor, and the same input to a uint8 rounding step or two
        assert tuple(x.shape) == tuple(ref_in.shape) == (1, 3, *spec.network_shape(h, w))
        step = 1 / 255 / min(spec.preprocess.std)
        diff = (x - ref_in).abs()
        assert float(diff.max()) <= 2 * step * 1.01
        assert float((diff > step * 1.01).float().mean()) <= 1e-3
        shapes.add(tuple(x.shape[-2:]))
        depth = engine.infer(x)["depth"][0]
        target = (h // 2, w // 2)
        ours = F.interpolate(depth[None, None], size=target, mode="bicubic", align_corners=False)[0, 0].numpy()
        ref = oracle.depth_map(image, target)
        corr, p99 = agreement(ours, ref)
        assert corr >= CORR_MIN and p99 <= P99_MAX, (family, corr, p99)
        assert float(np.std(ref)) > 0.05 * float(np.abs(ref).mean() + 1e-6), "oracle depth is flat"
        if spec.metric:
            assert float(ours.min()) >= 0.0 and float(ours.max()) <= 20.0 + 1e-3
    if spec.preprocess.keep_aspect_ratio:
        assert len(shapes) == 2, shapes  # landscape and portrait sources: two network shapes
    else:
        assert len(shapes) == 1


@pytest.mark.parametrize("family", SEG_FAMILIES)
def test_segmentation_family_matches_transformers(family: str, ckpts: dict[str, Path],
                                                  frames: list[np.ndarray]) -> None:
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    engine = _engine("segmentation", ckpts[family])
    assert engine.spec.depth_kind is None and len(engine.spec.labels) == 150
    proc = AutoImageProcessor.from_pretrained(ckpts[family])
    model = AutoModelForSemanticSegmentation.from_pretrained(ckpts[family]).eval()
    pre = Preprocessor(engine.spec.preprocess)
    for image in frames[:3]:
        h, w = image.shape[:2]
        logits = engine.infer(pre([torch.from_numpy(image.copy())]))["logits"]
        ours = F.interpolate(logits, size=(h // 4, w // 4), mode="bilinear", align_corners=False)[0].argmax(0)
        with torch.inference_mode():
            out = model(**proc(images=image, return_tensors="pt"))
        ref = proc.post_process_semantic_segmentation(out, target_sizes=[(h // 4, w // 4)])[0]
        assert float((ours == ref).float().mean()) >= 0.99
        assert len(torch.unique(ref)) >= 5


# ---- refusals: one line, naming the model type found and what is supported ----

def _refused(task: str, path: Path | str) -> str:
    with pytest.raises(ModelLoadError) as e:
        load_model(task, str(path))  # type: ignore[arg-type]
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 800, msg
    assert "{" not in msg, msg  # no unformatted placeholders
    return msg


def test_glpn_is_refused(tmp_path: Path) -> None:
    msg = _refused("depth", make_glpn_checkpoint(tmp_path / "glpn"))
    assert "'glpn'" in msg and "GLPNForDepthEstimation" in msg and "depth_anything" in msg and "dpt" in msg


@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_vit_classifier_is_refused(task: str, tmp_path: Path) -> None:
    msg = _refused(task, make_vit_classifier_checkpoint(tmp_path / "vit"))
    assert "'vit'" in msg and "ViTForImageClassification" in msg and "supports model types" in msg


def test_zoedepth_is_refused(tmp_path: Path) -> None:
    from transformers import ZoeDepthConfig

    ZoeDepthConfig().save_pretrained(tmp_path / "zoe")
    msg = _refused("depth", tmp_path / "zoe")
    assert "'zoedepth'" in msg and "not supported" in msg


def test_empty_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    msg = _refused("depth", tmp_path / "empty")
    assert "is empty" in msg and "save_pretrained" in msg


def test_truncated_weights_are_refused(tmp_path: Path) -> None:
    path = truncate_weights(make_family_checkpoint(tmp_path / "da", "depth-anything-v2"))
    msg = _refused("depth", path)
    assert "depth_anything" in msg and "truncated or corrupt" in msg


def test_renamed_weight_key_is_refused(tmp_path: Path) -> None:
    path = make_family_checkpoint(tmp_path / "da", "depth-anything-v2")
    key = rename_weight_key(path)  # the file's name; transformers reports the model's own name for it
    msg = _refused("depth", path)
    assert "depth_anything" in msg and "1 missing keys" in msg and "1 unexpected keys" in msg
    assert key.rsplit(".", 1)[-1] + "_renamed" in msg
    assert "randomly initialised" in msg


def test_depth_anything_config_with_dpt_weights_is_refused(tmp_path: Path, ckpts: dict[str, Path]) -> None:
    """A Depth Anything config.json over a DPT weight file: every head and neck key differs."""
    import shutil

    path = tmp_path / "mixed"
    shutil.copytree(ckpts["depth-anything-v2"], path)
    shutil.copy(ckpts["dpt"] / "model.safetensors", path / "model.safetensors")
    msg = _refused("depth", path)
    assert "missing" in msg and "unexpected" in msg


def test_segmentation_as_depth_and_reverse_are_refused(ckpts: dict[str, Path]) -> None:
    msg = _refused("depth", ckpts["dpt-seg"])
    assert "segmentation checkpoint" in msg and "--model segmentation=" in msg
    msg = _refused("segmentation", ckpts["dpt"])
    assert "depth checkpoint" in msg and "--model depth=" in msg
    msg = _refused("segmentation", ckpts["depth-anything-v2"])
    assert "'depth_anything'" in msg and "--model depth=" in msg


def test_segmentation_as_depth_without_architectures_is_refused_by_its_weights(
        tmp_path: Path, ckpts: dict[str, Path]) -> None:
    import shutil

    path = tmp_path / "noarch"
    shutil.copytree(ckpts["dpt-seg"], path)
    cfg = json.loads((path / "config.json").read_text())
    cfg.pop("architectures", None)
    (path / "config.json").write_text(json.dumps(cfg))
    msg = _refused("depth", path)
    assert "do not match DPTForDepthEstimation" in msg and "another shape" in msg


def test_invalid_preprocessor_config_names_the_file(tmp_path: Path, ckpts: dict[str, Path]) -> None:
    import shutil

    path = tmp_path / "badproc"
    shutil.copytree(ckpts["dpt"], path)
    (path / "preprocessor_config.json").write_text('{"size": {"height": 480, "width": 480},')
    msg = _refused("depth", path)
    assert "preprocessor_config.json" in msg and "not valid JSON" in msg and "line 1" in msg


def test_missing_preprocessor_config_uses_dpt_defaults(tmp_path: Path, ckpts: dict[str, Path],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    path = tmp_path / "noproc"
    shutil.copytree(ckpts["dpt"], path)
    (path / "preprocessor_config.json").unlink()
    loaded = load_model("depth", str(path))
    assert (loaded.preprocess.height, loaded.preprocess.width) == (384, 384)
    assert "no preprocessor_config.json" in caplog.text


@pytest.mark.parametrize("key", ["image_processor_type", "feature_extractor_type"])
def test_a_legacy_dpt_feature_extractor_name_loads_as_dpt_image_processor(key: str, tmp_path: Path,
                                                                           ckpts: dict[str, Path]) -> None:
    """A re-saved Intel/dpt-hybrid-midas names its processor "DPTFeatureExtractor", which transformers 5 no
    longer resolves: it holds DPTImageProcessor's values and loads as one."""
    import shutil

    path = tmp_path / "legacy"
    shutil.copytree(ckpts["dpt-hybrid"], path)
    cfg = json.loads((path / "preprocessor_config.json").read_text())
    cfg.pop("image_processor_type", None)
    cfg[key] = "DPTFeatureExtractor"
    (path / "preprocessor_config.json").write_text(json.dumps(cfg))
    loaded = load_model("depth", str(path))
    assert loaded.preprocess == load_model("depth", str(ckpts["dpt-hybrid"])).preprocess


def test_invalid_config_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "badcfg").mkdir()
    (tmp_path / "badcfg" / "config.json").write_text("{nope")
    msg = _refused("depth", tmp_path / "badcfg")
    assert "config.json" in msg and "not valid JSON" in msg


def test_unloadable_preprocessor_config_names_the_file(tmp_path: Path, ckpts: dict[str, Path]) -> None:
    """Valid JSON that the image processor cannot be built from: an error naming the file, never 384 defaults."""
    import shutil

    path = tmp_path / "oddproc"
    shutil.copytree(ckpts["depth-anything-v2"], path)
    cfg = json.loads((path / "preprocessor_config.json").read_text())
    cfg["image_processor_type"] = "NoSuchImageProcessor"
    (path / "preprocessor_config.json").write_text(json.dumps(cfg))
    msg = _refused("depth", path)
    assert "preprocessor_config.json" in msg and "cannot be loaded" in msg


@pytest.mark.parametrize("sink", ["dir", "redis"])
def test_more_than_65536_labels_are_refused_when_the_checkpoint_loads(assets: dict[str, Path], tmp_path: Path,
                                                                      redis_server: RedisServer, sink: str) -> None:
    """Class ids past 65535 cannot be published in a 16-bit mask: refused at load, whatever the sink."""
    from pipeline.sample import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "seg70k", "segmentation", image_size=32, num_labels=70000)
    out = tmp_path / "out"
    target = redis_server.url if sink == "redis" else f"dir:{out}"
    p = cli("run", "-s", f"big={assets['clip360']}", "-m", f"segmentation={ckpt}", "--tasks", "segmentation",
            "--batch-size", "1", "--mask-size", "16x16", "--sink", target, "--metrics-port", "-1")
    assert p.returncode == 1, p.stderr
    line = one_error_line(p.stderr)
    assert str(ckpt) in line and "70000 labels" in line and "65,536" in line, line
    assert "unexpected" not in line
    assert not list(out.rglob("*.png")) and not list(out.rglob("*.jsonl"))
    assert redis_server.client().keys("*") == []  # nothing published, not even dpt:meta


def proc_with(ckpt: Path, path: Path, **fields: object) -> Path:
    shutil.copytree(ckpt, path)
    cfg = json.loads((path / "preprocessor_config.json").read_text())
    (path / "preprocessor_config.json").write_text(json.dumps({**cfg, **fields}))
    return path


@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_a_zero_image_std_is_refused_naming_the_file(assets: dict[str, Path], tmp_path: Path,
                                                     redis_server: RedisServer, task: str) -> None:
    ckpt = proc_with(assets[task], tmp_path / "zero-std", image_std=[0, 0, 0])
    p = cli("run", "-s", f"cam={assets['clip360']}", "-m", f"{task}={ckpt}", "--tasks", task,
            "--sink", redis_server.url, "--metrics-port", "-1")
    assert p.returncode == 1, p.stderr
    line = one_error_line(p.stderr)
    assert str(ckpt / "preprocessor_config.json") in line and "image_std" in line, line
    assert redis_server.client().keys("*") == []


def test_a_label_with_a_newline_is_one_line_everywhere(assets: dict[str, Path], tmp_path: Path,
                                                       redis_server: RedisServer) -> None:
    """Control characters in ``id2label`` become spaces when the checkpoint loads: the overlay video, snapshot
    and ``dpt:meta`` all get one-line labels."""
    from pipeline.sample import make_clip

    ckpt = tmp_path / "seg-nl"
    shutil.copytree(assets["segmentation"], ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["id2label"] = {k: f"bad\nlabel\t{k}\r" for k in cfg["id2label"]}
    cfg["label2id"] = {v: int(k) for k, v in cfg["id2label"].items()}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    clip = make_clip(tmp_path / "small.mp4", frames=10, width=320, height=180, seed=2)
    out = tmp_path / "video"
    p = cli("run", "-s", f"cam={clip}", "-m", f"segmentation={ckpt}", "-m", f"depth={assets['depth']}",
            "--sink", redis_server.url, "--sink", f"video:{out}", "--metrics-port", "-1")
    assert p.returncode == 0, p.stderr
    assert "error" not in p.stderr
    assert (out / "cam.mp4").stat().st_size > 0
    labels = json.loads(redis_server.client().hget("dpt:meta", "labels"))
    assert labels["0"] == "bad label 0"
    assert not any(ch in v for v in labels.values() for ch in "\n\r\t")
    s = cli("snapshot", "cam", "-o", str(tmp_path / "snap.png"), "--redis", redis_server.url)
    assert s.returncode == 0, s.stderr
    show = cli("show", "--redis", redis_server.url, "-n", "1")
    assert show.returncode == 0, show.stderr
    assert "bad label" in show.stdout and "bad\n" not in show.stdout
