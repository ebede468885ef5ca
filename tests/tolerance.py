"""Comparisons across code paths, kernels, processes or load paths: a few float32 ulps, never bit equality.

Bit equality is kept only where both sides run the same code on purpose (the same function twice, a copy). Two
implementations of the same arithmetic (a batched and a per-sample matmul, AVX-512 and generic kernels, a full
and a partial load) may round differently in the last bits.
"""

import torch

FLOAT32_EPS = torch.finfo(torch.float32).eps  # 1.19e-7: one ulp at 1.0


def assert_within_ulps(actual: torch.Tensor, expected: torch.Tensor, ulps: float = 4, name: str = "") -> None:
    """|actual - expected| <= ulps float32 ulps of the expected tensor's largest magnitude, element-wise."""
    actual, expected = actual.detach().cpu(), expected.detach().cpu()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = max(expected.abs().max().item(), 1e-30) if expected.numel() else 1.0
    bound = ulps * FLOAT32_EPS * scale
    diff = (actual.double() - expected.double()).abs().max().item() if expected.numel() else 0.0
    assert diff <= bound, f"{name}: max |diff| {diff:.3g} > {ulps:g} ulps of {scale:.3g} ({bound:.3g})"
