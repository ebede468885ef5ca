"""VAE parity with the official CausalVideoVAE: every recorded encode/decode call of every ``*/vae`` case.

The calls are read from the manifest's call strings (e.g. ``vae.encode(video, temporal_chunk=True,
window_size=8, tile_sample_min_size=32)``), so other windows, tile sizes and shapes work unchanged. The
official model ran with tiling enabled, whose default tile is 256 px when a call names none.
"""

import ast
import os

import pytest
import torch

from golden import assert_close, case_params, checkpoint_root, require_case, tensors
from tolerance import assert_within_ulps
from pyramid_flow.vae import load_vae, temporal_chunks

ATOL = 1e-4
OFFICIAL_TILE = 256  # tile_sample_min_size default of the official encode/decode, tiling enabled
OFFICIAL_DEFAULTS = {"is_init_image": True, "return_dict": True}  # official kwargs with no counterpart here
OFFICIAL_ENCODE_WINDOW_FRAMES = 8  # the official encode's window_size counts video frames; ours counts latent frames
_vaes = {}


def vae_of(variant: str):
    if variant not in _vaes:
        _vaes[variant] = load_vae(os.path.join(checkpoint_root(variant), "causal_video_vae"))
    return _vaes[variant]


def parse_call(call: str):
    """'vae.decode(z, temporal_chunk=True, window_size=1).sample  [note]' -> ('decode', 'z', kwargs)."""
    expr = call.split("  [")[0].strip()
    if expr.endswith(".sample"):
        expr = expr[: -len(".sample")]
    node = ast.parse(expr, mode="eval").body
    assert isinstance(node, ast.Call) and node.func.attr in ("encode", "decode"), call
    kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
    for name, value in OFFICIAL_DEFAULTS.items():
        assert kwargs.pop(name, value) == value, f"unsupported official argument {name} in {call}"
    kwargs.setdefault("tile_sample_min_size", OFFICIAL_TILE)
    if node.func.attr == "encode" and "window_size" in kwargs:
        kwargs["window_size"] //= OFFICIAL_ENCODE_WINDOW_FRAMES
    return node.func.attr, node.args[0].id, kwargs


@pytest.mark.parametrize("case", case_params("vae"))
def test_vae_calls(case):
    case = require_case(case)
    vae, recorded = vae_of(case["variant"]), tensors(case["file"])
    for key, call in case["calls"].items():
        method, argument, kwargs = parse_call(call)
        out = getattr(vae, method)(recorded[f"input/{argument}"], **kwargs)
        assert_close(out, recorded[key], ATOL, f"{case['name']} {key}: {call}")


@pytest.mark.parametrize("case", case_params("vae"))
def test_iter_decode_matches_decode(case):
    """Streaming with one cache per tile gives decode()'s numbers exactly, piece by piece."""
    case = require_case(case)
    vae, z = vae_of(case["variant"]), tensors(case["file"])["input/z"]
    settings = dict(window_size=1, tile_sample_min_size=24)  # 3-latent tiles every 2: several rows and columns
    seen = []
    pieces = list(vae.iter_decode(z, callback=lambda done, total: seen.append((done, total)), **settings))
    whole = vae.decode(z, temporal_chunk=True, **settings)
    chunks = temporal_chunks(z.shape[2], settings["window_size"])  # 2 latent frames, then 1 at a time
    expected = [8 * (c.stop - c.start) - (7 if c.start == 0 else 0) for c in chunks]
    assert [p.shape[2] for p in pieces] == expected
    assert_within_ulps(torch.cat(pieces, dim=2), whole, name="streamed pieces")  # per-tile streams vs decode()
    assert seen[-1][0] == seen[-1][1] == len(seen) and len(seen) % len(pieces) == 0
