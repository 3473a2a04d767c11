"""Stages, one per arrow of the data flow: ``preprocess`` -> ``infer`` (cross-stream batcher) -> ``postprocess``
(masks, class fractions, depth summary) -> ``publish`` (to the sinks). ``base`` holds the stage lifecycle,
``gpu`` the CUDA stream/event hand-offs."""

from __future__ import annotations

from pipeline.stages.base import Stage, is_control
from pipeline.stages.infer import InferStage
from pipeline.stages.postprocess import PostprocessStage
from pipeline.stages.preprocess import PreprocessStage
from pipeline.stages.publish import PublishStage

__all__ = ["InferStage", "PostprocessStage", "PreprocessStage", "PublishStage", "Stage", "is_control"]
