"""Tiny DiTs with random init and the inputs the sampler gives them, for tests of DiT execution paths."""

import torch

from pyramid_flow.dit import DIT_CLASSES
from pyramid_flow.testing.tiny import TINY_DIT


def tiny_dit(variant: str) -> torch.nn.Module:
    torch.manual_seed(0)  # module init only; the inputs below use their own generator
    return DIT_CLASSES[variant](**TINY_DIT[variant]).eval()


def dit_inputs(model, generator: torch.Generator, frames: int):
    """A history of ``frames - 1`` frames at full size plus the noisy frame, CFG batch 2, one padded prompt."""
    context_dim = model.context_embedder.in_features
    pooled_dim = model.time_text_embed.text_embedder.linear_1.in_features
    clips = [torch.randn(2, model.out_channels, frames - 1, 8, 8, generator=generator),
             torch.randn(2, model.out_channels, 1, 8, 8, generator=generator)]
    context = torch.randn(2, 6, context_dim, generator=generator)
    context_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    pooled = torch.randn(2, pooled_dim, generator=generator)
    return clips, context, context_mask, pooled, torch.tensor([700.0, 700.0])
