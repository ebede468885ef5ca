"""The default layer namespace (pyramid_flow.ops): oneDNN kernels on the CPU, the same results as torch.nn."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from pyramid_flow import ops
from tolerance import assert_within_ulps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


SHAPE_SWEEP = """
import gc, torch
from pyramid_flow import ops
ops.bound_onednn_caches()  # what the command line, the pipeline and the ComfyUI pack do before any work

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

torch.set_num_threads(2)
layers = [ops.Linear(256, n).eval() for n in (256, 768, 1024, 1280)] + [ops.Linear(1024, 256).eval()]
tokens = torch.randn(2, 8000, 1024)
start = rss_mb()
with torch.no_grad():
    for _ in range(2):  # a growing sequence, as the units of a video: a new shape per call
        for length in range(400, 1600, 11):
            for layer in layers:
                layer(tokens[:, 100 : 100 + length, : layer.in_features])
gc.collect()
print(rss_mb() - start)
"""


@pytest.mark.skipif(not torch.backends.mkldnn.is_available() or not os.path.exists("/proc/self/statm"),
                    reason="platform condition: oneDNN's caches exist only where torch has oneDNN (x86 and ARM "
                                           "builds), and RSS is read from Linux's /proc")
def test_onednn_caches_stay_bounded_over_many_shapes():
    """Unbounded, oneDNN's primitive caches grew by about 3.9 GB over this sweep of 1,100 matmul shapes on an
    AMD EPYC; bounded by pyramid_flow.ops.bound_onednn_caches, by 0.2 GB (a fresh process: the caches are read when
    oneDNN first runs)."""
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}
    env["PYTHONPATH"] = ROOT
    grown = float(subprocess.run([sys.executable, "-c", SHAPE_SWEEP], env=env, capture_output=True, text=True,
                                 check=True).stdout.split()[-1])
    assert grown < 1000, f"RSS grew by {grown:.0f} MB over the shape sweep"


def test_importing_the_package_sets_no_process_state():
    """The cache bound is a call of the front doors, not an import side effect."""
    env = {k: v for k, v in os.environ.items() if k not in ops.ONEDNN_CACHE_VARIABLES}
    env["PYTHONPATH"] = ROOT
    code = ("import os, pyramid_flow.ops, pyramid_flow.pipeline, pyramid_flow.orchestration\n"
            "before = [os.environ.get(v) for v in pyramid_flow.ops.ONEDNN_CACHE_VARIABLES]\n"
            "os.environ['LRU_CACHE_CAPACITY'] = '7'\n"
            "pyramid_flow.ops.bound_onednn_caches()\n"
            "print(before, os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'], os.environ['LRU_CACHE_CAPACITY'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[None,", "None]", "32", "7"]  # nothing on import; the bound; the user's own value kept
