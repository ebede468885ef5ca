"""The VAE decode's tiles dealt over gloo processes (the decode of a parallel run): rank 0 yields the frames one
process gives (every tile runs the same code on the same shapes; other processes and thread counts may round a
few ulps apart), the other ranks yield nothing."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pyramid_flow.parallel import TileRanks
from test_vae import random_vae
from tolerance import assert_within_ulps

TILE_PX = 64  # 8-latent tiles: a 16 x 24 latent makes 3 x 5 of them


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def latent() -> torch.Tensor:
    return torch.randn(1, 16, 3, 16, 24, generator=torch.Generator().manual_seed(2))


def rank_main(rank: int, size: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        pieces = list(random_vae().iter_decode(latent(), 1, TILE_PX, share=TileRanks(rank, size, torch.device("cpu"))))
        results.put((rank, torch.cat(pieces, dim=2).numpy() if pieces else None))  # plain pickle, no shared memory
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("size", [2, 3])
def test_rank_zero_yields_the_one_process_frames(size):
    expected = torch.cat(list(random_vae().iter_decode(latent(), 1, TILE_PX)), dim=2)
    results = mp.get_context("spawn").Queue()
    ranks = mp.start_processes(rank_main, args=(size, free_port(), results), nprocs=size, join=False,
                               start_method="spawn")
    got = dict(results.get(timeout=120) for _ in range(size))  # before joining: a rank exits once its video is read
    while not ranks.join():
        pass
    assert all(got[rank] is None for rank in range(1, size))
    assert got[0].shape == expected.shape == (1, 3, 17, 128, 192)
    assert_within_ulps(torch.from_numpy(got[0]), expected, ulps=8, name="tiles over ranks vs one process")


def test_tiles_are_dealt_round_robin():
    shares = [[k for k in range(7) if TileRanks(rank, 3, torch.device("cpu")).owns(k)] for rank in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
