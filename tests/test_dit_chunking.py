"""Long sequences run the token-wise work (projections, norms, RoPE, MLPs) over pieces of the tokens: the same
velocities as in one piece."""

import pytest
import torch

from pyramid_flow.dit import DIT_CLASSES, layers

from dit_inputs import dit_inputs, tiny_dit
from tolerance import assert_within_ulps


@pytest.mark.parametrize("variant", sorted(DIT_CLASSES))
def test_chunked_mlps_equal_one_piece(variant, monkeypatch):
    model = tiny_dit(variant)
    call = dit_inputs(model, torch.Generator().manual_seed(2), frames=3)
    with torch.no_grad():
        whole = model(*call)
        monkeypatch.setattr(layers, "MIN_PIECE_TOKENS", 1)  # pieces of the tiny sequence; the last one shorter
        chunked = model(*call)
    assert_within_ulps(chunked, whole, ulps=16)


def test_per_token_chunks_writes_every_token_once(monkeypatch):
    monkeypatch.setattr(layers, "MIN_PIECE_TOKENS", 2)
    monkeypatch.setattr(layers, "TOKEN_PIECES", 3)
    x, y = torch.randn(2, 10, 3), torch.randn(2, 10, 5)
    calls = []

    def fn(a, b):
        calls.append(a.shape[1])
        return torch.cat([a * 2, b], dim=2)

    # bit-exact: an element-wise fn gives each token the same value whichever piece it is in
    assert torch.equal(layers.per_token_chunks(fn, x, y), torch.cat([x * 2, y], dim=2))
    assert calls == [4, 4, 2]
