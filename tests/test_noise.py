"""Noise sources: seeding, keys per unit, the block covariance, the official stream, replay, the registry."""

import os
import subprocess
import sys

import pytest
import torch

from pyramid_flow.noise import (
    OFFICIAL_BLOCK_FACTOR,
    OfficialNoise,
    ReplayNoise,
    SeededNoise,
    block_covariance,
    block_noise_factor,
    blocks_to_image,
    draw_posterior,
    make_noise,
)
from tolerance import assert_within_ulps

CPU = torch.device("cpu")
SHAPE = (1, 4, 1, 8, 12)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _draws(source):
    return [source.latents((1, 4, 3, 8, 12), 0, CPU, torch.float32), source.posterior((1, 4, 1, 4, 4), CPU, torch.float32),
            source.block_noise(SHAPE, 1, 1, CPU, torch.float32)]


@pytest.mark.parametrize("make", [SeededNoise, OfficialNoise])
def test_same_seed_is_bit_identical_and_seeds_differ(make):
    first, again, other = _draws(make(11)), _draws(make(11)), _draws(make(12))
    for a, b, c in zip(first, again, other):
        assert torch.equal(a, b)  # the same function twice
        assert not torch.equal(a, c)


def test_default_draws_are_keyed_by_unit_and_stage():
    """A unit's starting noise and block noise do not depend on where the run starts or on what was drawn before,
    so generating T + N frames and extending T frames by N draw the same noise for every unit."""
    whole = SeededNoise(5).latents((1, 4, 5, 8, 8), 0, CPU, torch.float32)
    late = SeededNoise(5)
    late.block_noise(SHAPE, 9, 2, CPU, torch.float32)  # an unrelated draw first
    assert torch.equal(late.latents((1, 4, 2, 8, 8), 3, CPU, torch.float32), whole[:, :, 3:])
    source = SeededNoise(5)
    assert torch.equal(source.block_noise(SHAPE, 2, 1, CPU, torch.float32), SeededNoise(5).block_noise(SHAPE, 2, 1, CPU, torch.float32))
    assert not torch.equal(source.block_noise(SHAPE, 2, 1, CPU, torch.float32), source.block_noise(SHAPE, 2, 2, CPU, torch.float32))
    assert not torch.equal(whole[:, :, 0], whole[:, :, 1])


DRAW_SCRIPT = """
import hashlib, sys, torch
from pyramid_flow.noise import SeededNoise
source = SeededNoise(int(sys.argv[1]))
cpu = torch.device("cpu")
draws = [source.latents((1, 16, 2, 48, 80), 3, cpu, torch.float32), source.posterior((1, 16, 1, 48, 80), cpu, torch.float32),
         source.block_noise((1, 16, 1, 24, 40), 4, 1, cpu, torch.float32)]
print(torch.backends.cpu.get_cpu_capability(), hashlib.sha256(b"".join(d.numpy().tobytes() for d in draws)).hexdigest())
"""


def test_same_seed_gives_bit_identical_noise_on_generic_cpu_kernels():
    """The default source's draws in a process on torch's generic kernels (ATEN_CPU_CAPABILITY=default, what ARM
    and older x86 machines run) equal those in a process on this machine's vectorised kernels, bit for bit."""
    outputs = {}
    for capability in ("default", None):
        env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
        if capability:
            env["ATEN_CPU_CAPABILITY"] = capability
        out = subprocess.run([sys.executable, "-c", DRAW_SCRIPT, "1234"], env=env, cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
        outputs[capability] = out
    assert outputs["default"][0] == "DEFAULT"
    assert outputs["default"][1] == outputs[None][1], outputs


def test_factor_reproduces_the_singular_covariance():
    for gamma in (1 / 3, 0.2, 0.0):
        factor = block_noise_factor(gamma)
        torch.testing.assert_close(factor @ factor.T, block_covariance(gamma), atol=1e-12, rtol=0)
    assert block_noise_factor(1 / 3)[3, 3] == 0  # the exact factor of the singular matrix
    with pytest.raises(ValueError, match="gamma"):
        block_noise_factor(0.5)  # covariance no longer positive semi-definite


def test_default_block_noise_has_the_block_covariance():
    """Sample covariance of 2x2 blocks over 2**18 blocks: standard error ~ sqrt(2/n) ~ 0.003, tolerance 0.015."""
    noise = SeededNoise(3).block_noise((1, 16, 1, 256, 256), 1, 1, CPU, torch.float32)
    blocks = noise.reshape(-1, 128, 2, 128, 2).permute(0, 1, 3, 2, 4).reshape(-1, 4).double()
    covariance = blocks.T @ blocks / blocks.shape[0]
    torch.testing.assert_close(covariance, block_covariance(1 / 3), atol=0.015, rtol=0)
    assert blocks.sum(dim=1).abs().max() < 1e-5  # singular direction: each block sums to zero


def test_official_mode_reproduces_the_per_block_multivariate_normal_loop():
    """The official sampler draws one MultivariateNormal sample per block from the global CPU RNG."""
    shape = (1, 3, 1, 6, 10)
    torch.manual_seed(21)
    distribution = torch.distributions.MultivariateNormal(torch.zeros(4), scale_tril=OFFICIAL_BLOCK_FACTOR)
    n_blocks = 3 * 3 * 5
    reference = blocks_to_image(torch.stack([distribution.sample() for _ in range(n_blocks)]), shape)
    ours = OfficialNoise(21).block_noise(shape, 0, 1, CPU, torch.float32)
    # the same eps stream; the 4x4 mix is summed by another routine than MultivariateNormal's matvec
    assert_within_ulps(ours, reference, name="official block noise")


def test_official_mode_draws_the_whole_video_then_slices_it():
    """The official draw covers every latent frame; image-to-video (first unit 1) uses frames 0 .. temp - 2."""
    torch.manual_seed(5)
    latents = torch.randn((1, 4, 4, 8, 12))
    assert torch.equal(OfficialNoise(5).latents((1, 4, 4, 8, 12), 0, CPU, torch.float32), latents)  # the same randn
    assert torch.equal(OfficialNoise(5).latents((1, 4, 3, 8, 12), 1, CPU, torch.float32), latents[:, :, :3])


def test_replay_checks_kind_and_shape():
    recorded = torch.randn(1, 4, 3, 8, 12)
    replay = ReplayNoise([("latents", recorded), ("block_noise", torch.ones(SHAPE))])
    assert torch.equal(replay.latents((1, 4, 2, 8, 12), 1, CPU, torch.float32), recorded[:, :, :2])
    with pytest.raises(RuntimeError, match="draw order differs"):
        replay.posterior(SHAPE, CPU, torch.float32)
    with pytest.raises(RuntimeError, match="no recorded noise left"):
        replay.block_noise(SHAPE, 1, 1, CPU, torch.float32)


def test_block_noise_rejects_odd_sizes():
    with pytest.raises(ValueError, match="even latent size"):
        SeededNoise(0).block_noise((1, 1, 1, 5, 4), 0, 1, CPU, torch.float32)


def test_sources_are_made_by_name():
    assert isinstance(make_noise("default", 3), SeededNoise)
    assert isinstance(make_noise("official", 3), OfficialNoise)
    with pytest.raises(ValueError, match="noise must be one of"):
        make_noise("philox", 3)


def test_posterior_draw_clamps_logvar():
    mean, logvar = torch.zeros(1, 2, 1, 1, 1), torch.tensor([50.0, -50.0]).view(1, 2, 1, 1, 1)

    class Ones:
        def posterior(self, shape, device, dtype):
            return torch.ones(shape, device=device, dtype=dtype)

    z = draw_posterior(Ones(), torch.cat([mean, logvar], 1))
    assert torch.allclose(z.flatten(), torch.tensor([20.0, -30.0]).mul(0.5).exp())


# The seed promise: a seed gives the same video after any update. These digests of the default noise were taken
# with torch 2.13.0 on x86 (the same with ATEN_CPU_CAPABILITY=default); a torch release or a change of our keying
# that would change users' videos fails here, loudly, instead of silently changing them.
SEED_DIGESTS = [  # (seed, unit, latent shape) -> digests of the unit's latent noise, stage-2 block noise, posterior
    ((0, 0, (1, 16, 1, 8, 12)), ("7d86b85e70092695", "76e66e104623fa2f", "6273c66eadab34fe")),
    ((42, 5, (2, 16, 3, 6, 10)), ("353e06dc139f7013", "33d97e4680f4a719", "98a41a9726df695b")),
    ((2**40 + 7, 30, (1, 16, 1, 48, 80)), ("b63af93d7e12d1a0", "748c0b375dcd34f7", "fbc3aece2076005d")),
]


@pytest.mark.parametrize("key,expected", SEED_DIGESTS, ids=[f"seed{k[0]}-unit{k[1]}" for k, _ in SEED_DIGESTS])
def test_the_default_noise_of_a_seed_never_changes(key, expected):
    import hashlib

    seed, unit, shape = key
    source = SeededNoise(seed)

    def digest(tensor: torch.Tensor) -> str:
        return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()[:16]

    block_shape = (shape[0], 16, 1, shape[3] * 2, shape[4] * 2)
    got = (digest(source.latents(shape, unit, CPU, torch.float32)),
           digest(source.block_noise(block_shape, unit, 2, CPU, torch.float32)),
           digest(source.posterior(shape, CPU, torch.float32)))
    assert got == expected, "the default noise of a seed changed: every user's video for that seed would change"
