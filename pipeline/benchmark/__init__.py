"""``dptstream bench`` as a library: ``plan`` (variants, batch sizes), ``timing`` (timers, CPU per thread, RSS),
``engine`` (engine-only), ``e2e`` (the whole pipeline into Redis), ``naive`` (a transformers loop), ``results``
(entries, ratios, machine facts), ``run`` (the orchestration), ``onnx_check`` (``build-engine --onnx-only``)."""

from __future__ import annotations
