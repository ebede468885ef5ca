"""The frame-prefix attention equals the official dense [B, 1, L, L] mask on every real token."""

import pytest
import torch
import torch.nn.functional as F

from pyramid_flow.attention import SDPA, AttentionBackend, sdpa_attention
from pyramid_flow.dit.sequence import joint_attention_mask, masked_attention


def official_dense_mask(context_mask: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """Reference §2.1: same-id tokens (real with real, padded with padded) AND time_q >= time_k."""
    image = torch.ones(context_mask.shape[0], times.shape[0] - context_mask.shape[1], dtype=torch.bool)
    real = torch.cat([context_mask.bool(), image], dim=1)
    mask = (real[:, :, None] == real[:, None, :]) & (times[:, None] >= times[None, :])[None]
    return mask[:, None]


@pytest.fixture(params=["masked", "mask-free"])
def backend(request):
    """Every attention backend: SDPA with the key mask, or one that takes no mask (sage, flash, xformers in
    ComfyUI), which the DiT calls per batch row with the padded text keys left out."""
    calls = []

    def mask_free(q, k, v, mask=None):
        assert mask is None
        calls.append(q.shape)
        return sdpa_attention(q, k, v)

    attention = AttentionBackend(mask_free, supports_mask=False) if request.param == "mask-free" else SDPA
    return request.param, calls, attention


def test_prefix_segments_match_the_dense_mask_on_real_tokens(backend):
    generator = torch.Generator().manual_seed(0)
    text = 6
    times = torch.cat([torch.zeros(text), torch.tensor([0.0] * 4 + [1.0] * 4 + [2.0] * 16 + [3.0] * 16)])
    context_mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    q, k, v = (torch.randn(2, 3, times.shape[0], 8, generator=generator) for _ in range(3))

    name, calls, attention = backend
    mask = joint_attention_mask(context_mask, times, attention=attention)
    assert mask.segments == [(0, 10), (10, 14), (14, 30), (30, 46)]  # text + frame 0, then one segment per frame
    ours = masked_attention(q, k, v, mask)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=official_dense_mask(context_mask, times))
    real = torch.cat([context_mask.bool(), torch.ones(2, times.shape[0] - text, dtype=torch.bool)], dim=1)
    for b in range(2):
        torch.testing.assert_close(ours[b][:, real[b]], reference[b][:, real[b]], atol=1e-6, rtol=1e-5)
    if name == "mask-free":
        assert len(calls) == 2 * len(mask.segments) and all(shape[0] == 1 for shape in calls)  # per row, no mask


def test_prompts_without_padding_need_no_mask(backend):
    times = torch.cat([torch.zeros(3), torch.tensor([0.0] * 4 + [1.0] * 4)])
    q, k, v = (torch.randn(2, 2, times.shape[0], 8) for _ in range(3))
    mask = joint_attention_mask(torch.ones(2, 3, dtype=torch.int64), times, attention=backend[2])
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=official_dense_mask(torch.ones(2, 3), times))
    torch.testing.assert_close(masked_attention(q, k, v, mask), dense, atol=1e-6, rtol=1e-5)


def test_without_temporal_causality_everything_is_one_segment():
    times = torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0])
    mask = joint_attention_mask(torch.tensor([[1, 0]]), times, temporal_causal=False)
    assert mask.segments == [(0, 5)]
    assert mask.key_mask.tolist() == [[[[True, False, True, True, True]]]]


def test_the_backend_is_per_model_and_per_call_not_process_wide():
    """Two DiTs in one process keep their own kernels; a call may choose another; importing changes nothing."""
    from pyramid_flow.dit import PyramidFluxDiT
    from pyramid_flow.testing.tiny import TINY_DIT

    calls = []
    counting = AttentionBackend(lambda q, k, v, mask=None: calls.append(1) or sdpa_attention(q, k, v, mask))
    first, second = (PyramidFluxDiT(**TINY_DIT["miniflux"]).eval() for _ in range(2))
    first.attention_backend = counting
    assert second.attention_backend is SDPA
    generator = torch.Generator().manual_seed(0)
    clips = [torch.randn(1, 16, 1, 8, 8, generator=generator)]
    context = torch.randn(1, 128, TINY_DIT["miniflux"]["joint_attention_dim"], generator=generator)
    inputs = (clips, context, torch.ones(1, 128, dtype=torch.int64),
              torch.randn(1, TINY_DIT["miniflux"]["pooled_projection_dim"], generator=generator), torch.tensor([500.0]))
    with torch.no_grad():
        second(*inputs)
        assert not calls
        first(*inputs)
        per_call = len(calls)
        assert per_call > 0
        second(*inputs, attention_backend=counting)
    assert len(calls) == 2 * per_call
