"""Ulysses sequence parallel inside the DiT: S gloo processes, each holding a share of the image tokens, return
the velocity of one process for both variants, every S that divides the heads, token counts that need padding
and prompts of different lengths; an S that does not divide the heads is refused with the sizes that do."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dit_inputs import tiny_dit
from pyramid_flow.dit.sequence_parallel import SequenceSplit, check_split, valid_splits

VELOCITY_ATOL = 1e-5  # the same per-head attention on other shapes: a few ulps of float32 at most


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dit_call(model, generator: torch.Generator):
    """A history of two half-size frames and a full-size noisy frame whose token count (30 + 60 = 90) is not a
    multiple of 4; CFG batch 2 with one padded prompt."""
    context_dim = model.context_embedder.in_features
    pooled_dim = model.time_text_embed.text_embedder.linear_1.in_features
    clips = [torch.randn(2, model.out_channels, 2, 6, 10, generator=generator),
             torch.randn(2, model.out_channels, 1, 12, 20, generator=generator)]
    context = torch.randn(2, 5, context_dim, generator=generator)
    context_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pooled = torch.randn(2, pooled_dim, generator=generator)
    return clips, context, context_mask, pooled, torch.tensor([700.0, 700.0])


def rank_main(rank: int, size: int, variant: str, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        model = tiny_dit(variant)
        call = dit_call(model, torch.Generator().manual_seed(1))
        with torch.no_grad():
            split = model(*call, sequence_split=SequenceSplit(rank, size))
            whole = model(*call)
        results.put((rank, (split - whole).abs().max().item(), tuple(split.shape)))
    finally:
        dist.destroy_process_group()


SPLITS = [("miniflux", 2), ("miniflux", 3), ("miniflux", 6), ("sd3", 2), ("sd3", 4)]  # tiny heads: 6 and 12


@pytest.mark.parametrize("variant,size", SPLITS, ids=[f"{variant}-{size}" for variant, size in SPLITS])
def test_every_rank_returns_the_velocity_of_one_process(variant, size):
    context = mp.get_context("spawn")
    results = context.Queue()
    mp.start_processes(rank_main, args=(size, variant, free_port(), results), nprocs=size, start_method="spawn")
    got = sorted(results.get(timeout=60) for _ in range(size))
    assert [rank for rank, _, _ in got] == list(range(size))
    assert all(shape == (2, 16, 1, 12, 20) for _, _, shape in got)
    assert max(error for _, error, _ in got) <= VELOCITY_ATOL


def test_a_split_must_divide_the_heads():
    assert valid_splits(30) == [2, 3, 5, 6, 10, 15, 30]  # miniFLUX
    assert valid_splits(24) == [2, 3, 4, 6, 8, 12, 24]  # SD3
    check_split(3, 30)
    with pytest.raises(ValueError, match=r"--sequence-parallel 4 does not divide the DiT's 30 attention heads: use "
                                         r"one of \[2, 3, 5, 6, 10, 15, 30\]"):
        check_split(4, 30)


def test_local_tokens_pad_at_the_end_and_all_tokens_drops_the_padding():
    tokens = torch.arange(2 * 7).reshape(1, 7, 2).float()
    pieces = [SequenceSplit(rank, 3).local_tokens(tokens) for rank in range(3)]
    assert [tuple(p.shape) for p in pieces] == [(1, 3, 2)] * 3
    assert torch.equal(torch.cat(pieces, dim=1)[:, :7], tokens)
    assert torch.equal(pieces[2][:, 1:], torch.zeros(1, 2, 2))  # two padding tokens, zero
