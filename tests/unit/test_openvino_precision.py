"""Which precision the OpenVINO engine runs per task (engines.openvino_engine.resolve_precision)."""

from __future__ import annotations

import pytest

from engines import UnsupportedPrecision
from engines.openvino_engine import resolve_precision


def test_auto_is_bf16_for_depth_where_the_cpu_has_it_and_fp32_for_segmentation() -> None:
    assert resolve_precision("depth", "auto", True) == ("bf16", None)
    assert resolve_precision("depth", "auto", False) == ("fp32", None)
    assert resolve_precision("segmentation", "auto", True) == ("fp32", None)
    assert resolve_precision("segmentation", "fp32", True) == ("fp32", None)
    assert resolve_precision("depth", "fp32", True) == ("fp32", None)


def test_bf16_segmentation_is_allowed_with_one_warning_stating_its_agreement() -> None:
    precision, warning = resolve_precision("segmentation", "bf16", True)
    assert precision == "bf16" and warning is not None and "0.91-0.96" in warning and "--precision fp32" in warning
    assert resolve_precision("depth", "bf16", True) == ("bf16", None)


@pytest.mark.parametrize(("task", "requested", "bf16_ok", "says"), [
    ("depth", "bf16", False, "no native BF16"),
    ("segmentation", "bf16", False, "no native BF16"),
    ("depth", "fp16", True, "not fp16"),
])
def test_what_cannot_run_is_one_usage_line(task: str, requested: str, bf16_ok: bool, says: str) -> None:
    with pytest.raises(UnsupportedPrecision, match=says) as e:
        resolve_precision(task, requested, bf16_ok)  # type: ignore[arg-type]
    assert "\n" not in str(e.value)
