"""Noise sources: seeding, the block covariance, the official stream, replay order."""

import pytest
import torch

from tolerance import assert_within_ulps

from pyramid_flow.noise import (
    OFFICIAL_BLOCK_FACTOR,
    NoiseSource,
    OfficialNoise,
    ReplayNoise,
    block_covariance,
    block_noise_factor,
    blocks_to_image,
)

SHAPE = (1, 4, 1, 8, 12)


def _draws(source):
    cpu = torch.device("cpu")
    return [source.latents(SHAPE, cpu, torch.float32), source.posterior((1, 4, 1, 4, 4), cpu, torch.float32),
            source.block_noise(SHAPE, cpu, torch.float32)]


@pytest.mark.parametrize("make", [NoiseSource, OfficialNoise])
def test_same_seed_is_bit_identical_and_seeds_differ(make):
    first, again, other = _draws(make(11)), _draws(make(11)), _draws(make(12))
    for a, b, c in zip(first, again, other):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_factor_reproduces_the_singular_covariance():
    for gamma in (1 / 3, 0.2, 0.0):
        factor = block_noise_factor(gamma).double()
        torch.testing.assert_close(factor @ factor.T, block_covariance(gamma), atol=1e-6, rtol=0)
    assert block_noise_factor(1 / 3)[3, 3] == 0  # the exact factor of the singular matrix
    with pytest.raises(ValueError, match="gamma"):
        block_noise_factor(0.5)  # covariance no longer positive semi-definite


def test_vectorised_block_noise_has_the_block_covariance():
    """Sample covariance of 2x2 blocks over 2**18 blocks: standard error ~ sqrt(2/n) ~ 0.003, tolerance 0.015."""
    noise = NoiseSource(3).block_noise((1, 16, 1, 256, 256), torch.device("cpu"), torch.float32)
    blocks = noise.reshape(-1, 128, 2, 128, 2).permute(0, 1, 3, 2, 4).reshape(-1, 4).double()
    covariance = blocks.T @ blocks / blocks.shape[0]
    torch.testing.assert_close(covariance, block_covariance(1 / 3), atol=0.015, rtol=0)
    assert blocks.sum(dim=1).abs().max() < 1e-4  # singular direction: each block sums to zero


def test_official_mode_reproduces_the_per_block_multivariate_normal_loop():
    """The official sampler draws one MultivariateNormal sample per block from the global CPU RNG."""
    shape = (1, 3, 1, 6, 10)
    torch.manual_seed(21)
    distribution = torch.distributions.MultivariateNormal(torch.zeros(4), scale_tril=OFFICIAL_BLOCK_FACTOR)
    n_blocks = 3 * 3 * 5
    reference = blocks_to_image(torch.stack([distribution.sample() for _ in range(n_blocks)]), shape)
    ours = OfficialNoise(21).block_noise(shape, torch.device("cpu"), torch.float32)
    # the same eps stream; the 4x4 mix is summed by another routine than MultivariateNormal's matvec
    assert_within_ulps(ours, reference, name="official block noise")


def test_official_mode_draws_latents_then_block_noise_from_one_cpu_stream():
    torch.manual_seed(5)
    latents = torch.randn(SHAPE)
    source = OfficialNoise(5)
    assert torch.equal(source.latents(SHAPE, torch.device("cpu"), torch.float32), latents)


def test_replay_checks_kind_and_shape():
    replay = ReplayNoise([("latents", torch.zeros(SHAPE)), ("block_noise", torch.ones(SHAPE))])
    assert torch.equal(replay.latents(SHAPE, torch.device("cpu"), torch.float32), torch.zeros(SHAPE))
    with pytest.raises(RuntimeError, match="draw order differs"):
        replay.posterior(SHAPE, torch.device("cpu"), torch.float32)
    with pytest.raises(RuntimeError, match="no recorded noise left"):
        replay.block_noise(SHAPE, torch.device("cpu"), torch.float32)


def test_block_noise_rejects_odd_sizes():
    with pytest.raises(ValueError, match="even latent size"):
        NoiseSource(0).block_noise((1, 1, 1, 5, 4), torch.device("cpu"), torch.float32)
