"""The default layer namespace (pyramid_flow.ops): oneDNN kernels on the CPU, the same results as torch.nn."""

import pytest
import torch
import torch.nn.functional as F

from pyramid_flow import ops
from tolerance import assert_within_ulps


@pytest.mark.parametrize("shape", [(2, 300, 64), (5, 64)])
def test_linear_matches_torch_within_rounding(shape):
    """oneDNN and MKL sum the products in other orders: a few float32 ulps of the largest output apart."""
    generator = torch.Generator().manual_seed(0)
    layer = ops.Linear(64, 48).eval()
    x = torch.randn(shape, generator=generator)
    with torch.no_grad():
        assert_within_ulps(layer(x), F.linear(x, layer.weight, layer.bias), ulps=16)
        assert_within_ulps(layer(x[..., ::2, :] if x.dim() == 3 else x), F.linear(
            x[..., ::2, :] if x.dim() == 3 else x, layer.weight, layer.bias), ulps=16, name="strided input")


def test_linear_keeps_autograd_when_recording():
    layer = ops.Linear(8, 4)
    x = torch.randn(3, 8, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


def test_conv3d_takes_a_strided_bias_as_its_values():
    """aten's mkldnn_convolution reads a strided bias view as dense; ops.conv3d hands it a dense copy."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 1, 6, 6, generator=generator)
    weight, bias = torch.randn(8, 4, 1, 3, 3, generator=generator), torch.randn(16, generator=generator)
    expected = F.conv3d(x, weight, bias[::2].contiguous(), padding=(0, 1, 1))
    assert_within_ulps(ops.conv3d(x, weight, bias[::2], (1, 1, 1), (0, 1, 1)), expected, ulps=16)
