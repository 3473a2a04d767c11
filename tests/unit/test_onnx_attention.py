"""The export-only attention module accepts both transformers 4.x's and 5.x's calling conventions."""

from __future__ import annotations

import pytest
import torch
from transformers import DPTConfig
from transformers.models.dpt.modeling_dpt import DPTSelfAttention

from engines.onnx_export import _ExplicitSelfAttention


@pytest.fixture
def attn() -> DPTSelfAttention:
    torch.manual_seed(0)
    cfg = DPTConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=1)
    cfg._attn_implementation = "eager"
    return DPTSelfAttention(cfg).eval()


def test_same_context_as_transformers_called_the_5x_way(attn: DPTSelfAttention) -> None:
    x = torch.randn(2, 10, 32)
    ref, _ = attn(x)
    ctx, probs = _ExplicitSelfAttention(attn, fp32_softmax=True)(x)
    assert probs is None
    torch.testing.assert_close(ctx, ref, rtol=1e-5, atol=1e-6)


def test_positional_head_mask_and_output_attentions_of_4x(attn: DPTSelfAttention) -> None:
    """4.x: ``attention(hidden_states, head_mask, output_attentions)``, reading ``[0]`` (and ``[1]``)."""
    x = torch.randn(2, 10, 32)
    ref, _ = attn(x)
    mod = _ExplicitSelfAttention(attn, fp32_softmax=True)
    out = mod(x, None, False)
    torch.testing.assert_close(out[0], ref, rtol=1e-5, atol=1e-6)
    ctx, probs = mod(x, None, True)
    torch.testing.assert_close(ctx, ref, rtol=1e-5, atol=1e-6)
    assert probs is not None and probs.shape == (2, 4, 10, 10)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 10))
    # a head mask multiplies the probabilities (as 4.x's DPTViTSelfAttention): head 1 masked out, others kept
    head_mask = torch.ones(1, 4, 1, 1)
    head_mask[0, 1] = 0.0
    masked, _ = mod(x, head_mask, False)
    per_head = masked.view(2, 10, 4, 8)
    assert torch.count_nonzero(per_head[:, :, 1]) == 0
    keep = [0, 2, 3]
    torch.testing.assert_close(per_head[:, :, keep], ref.view(2, 10, 4, 8)[:, :, keep], rtol=1e-5, atol=1e-6)
