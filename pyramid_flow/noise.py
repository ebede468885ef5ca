"""Every random draw of a sampling run, from explicitly seeded generators (never the global RNG).

A run draws at three sites, in this order:

1. ``latents``: the starting noise of the units it generates, at full latent resolution [B, C, T, H, W] (the
   sampler reduces it to the lowest pyramid stage);
2. ``posterior`` (image-to-video only): the noise of the image's VAE posterior sample;
3. ``block_noise``: at each stage transition of each unit, 2x2-correlated noise with covariance
   (1 + gamma) I - gamma 11^T inside every 2x2 block.

:class:`NoiseSource` is that interface. Sources are made by name with :func:`make_noise`:

- ``"default"`` (:class:`SeededNoise`): every draw from its own CPU generator keyed by (seed, site, unit, stage),
  drawn in float64 and rounded to float32. float64 normal sampling runs the same scalar code under every CPU
  instruction set (float32 sampling has vectorised paths whose last bits differ), and the block mix is summed
  element-wise in a fixed order, so a seed gives the same video on every device and CPU. A unit's noise does not
  depend on where a run starts, so generating T + N frames equals generating T frames and extending by N.
- ``"official"`` (:class:`OfficialNoise`): the official app's streams after ``torch.manual_seed(seed)``: the
  latents of the whole run in one draw on the sampling device, the posterior from the same generator, block noise
  from the CPU generator in chunks of fewer than 16 values (which consumes the stream like the official
  per-block ``MultivariateNormal`` loop). Extending a video in this mode draws a new sequential stream: allowed,
  but not equal to a longer single run.
- :class:`ReplayNoise`: recorded tensors in call order, for parity tests against the official outputs.
"""

import hashlib
import math
from typing import Callable, Dict, List, Protocol, Sequence, Tuple

import torch

Shape = Sequence[int]

# The official sampler's float32 Cholesky factor of the singular block covariance at gamma = 1/3, as torch 2.1.2
# with MKL computes it (other LAPACK builds fail on this matrix, so it is hard-coded; analytically L44 = 0).
OFFICIAL_BLOCK_FACTOR = torch.tensor(
    [
        [1.0, 0.0, 0.0, 0.0],
        [-0.33333334, 0.94280905, 0.0, 0.0],
        [-0.33333334, -0.47140449, 0.81649661, 0.0],
        [-0.33333334, -0.47140449, -0.81649649, 0.00040744792],
    ],
    dtype=torch.float32,
)
OFFICIAL_CHUNK_BLOCKS = 3  # 12 values per normal_() call: below the 16-value vectorised path of the CPU kernel
LOGVAR_RANGE = (-30.0, 20.0)  # the official DiagonalGaussianDistribution clamp


class NoiseSource(Protocol):
    """The three draws of a run. ``unit`` and ``stage`` key a draw; sequential sources may ignore them."""

    def latents(self, shape: Shape, first_unit: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Starting noise [B, C, T, H, W] of units ``first_unit`` .. ``first_unit + T - 1``."""

    def posterior(self, shape: Shape, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Standard normal noise of an image posterior sample [B, C, 1, h, w]."""

    def block_noise(self, shape: Shape, unit: int, stage: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Block-correlated noise [B, C, 1, h, w] (h, w even) for entering ``stage`` of ``unit``."""


def block_covariance(gamma: float) -> torch.Tensor:
    """Covariance of the 4 values of one 2x2 block: (1 + gamma) I - gamma 11^T (float64)."""
    return (1 + gamma) * torch.eye(4, dtype=torch.float64) - gamma * torch.ones(4, 4, dtype=torch.float64)


def block_noise_factor(gamma: float) -> torch.Tensor:
    """Lower-triangular L (float64) with L L^T = block covariance, exact even when the matrix is singular."""
    if not 0 <= gamma <= 1 / 3 + 1e-12:
        raise ValueError(f"scheduler gamma must lie in [0, 1/3] for a valid block covariance, got {gamma}")
    cov = block_covariance(gamma)
    factor = torch.zeros(4, 4, dtype=torch.float64)
    for i in range(4):
        for j in range(i + 1):
            rest = cov[i, j] - (factor[i, :j] * factor[j, :j]).sum()
            if i == j:
                factor[i, i] = math.sqrt(max(rest.item(), 0.0))
            elif factor[j, j] > 0:
                factor[i, j] = rest / factor[j, j]
    return factor


def correlate_blocks(eps: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """[n, 4] i.i.d. values -> [n, 4] values L eps per block, summed element-wise over j = 0..3 in that order
    (no BLAS call, whose summation order depends on the CPU)."""
    factor = factor.to(eps.dtype)
    out = torch.zeros_like(eps)
    for j in range(4):
        out += eps[:, j : j + 1] * factor[:, j]
    return out


def blocks_to_image(values: torch.Tensor, shape: Shape) -> torch.Tensor:
    """[n_blocks, 4] in (b, c, t, h/2, w/2) block order, (p, q) row-major inside a block -> [B, C, T, H, W]."""
    b, c, t, h, w = shape
    values = values.reshape(b, c, t, h // 2, w // 2, 2, 2).permute(0, 1, 2, 3, 5, 4, 6)
    return values.reshape(b, c, t, h, w)


def count_blocks(shape: Shape) -> int:
    b, c, t, h, w = shape
    if h % 2 or w % 2:
        raise ValueError(f"block noise needs an even latent size, got {h}x{w}")
    return b * c * t * (h // 2) * (w // 2)


class SeededNoise:
    """The default source: one CPU generator per (seed, site, unit, stage), float64 draws rounded to float32."""

    def __init__(self, seed: int, gamma: float = 1 / 3):
        self.seed = int(seed)
        self.factor = block_noise_factor(gamma)

    def generator(self, site: str, *key: int) -> torch.Generator:
        """The generator of one draw site; its seed is a 64-bit hash of (seed, site, key)."""
        text = "/".join(str(part) for part in (self.seed, site, *key))
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        return torch.Generator("cpu").manual_seed(int.from_bytes(digest, "little"))

    def _randn(self, shape: Shape, site: str, *key: int) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.generator(site, *key), dtype=torch.float64)

    def latents(self, shape: Shape, first_unit: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        b, c, t, h, w = shape
        frames = [self._randn((b, c, 1, h, w), "latents", unit) for unit in range(first_unit, first_unit + t)]
        return torch.cat(frames, dim=2).to(torch.float32).to(device=device, dtype=dtype)

    def posterior(self, shape: Shape, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return self._randn(shape, "posterior").to(torch.float32).to(device=device, dtype=dtype)

    def block_noise(self, shape: Shape, unit: int, stage: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        eps = self._randn((count_blocks(shape), 4), "block_noise", unit, stage)
        values = correlate_blocks(eps, self.factor).to(torch.float32)
        return blocks_to_image(values, shape).to(device=device, dtype=dtype)


class OfficialNoise:
    """The official app's random streams for ``seed`` (see the module docstring)."""

    def __init__(self, seed: int, gamma: float = 1 / 3, device: torch.device = torch.device("cpu")):
        device = torch.device(device)
        self.cpu_generator = torch.Generator("cpu").manual_seed(seed)
        self.device_generator = self.cpu_generator if device.type == "cpu" else torch.Generator(device).manual_seed(seed)
        self.factor = OFFICIAL_BLOCK_FACTOR if abs(gamma - 1 / 3) < 1e-12 else block_noise_factor(gamma).float()

    def _device_randn(self, shape: Shape, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        generated = torch.randn(tuple(shape), generator=self.device_generator, device=self.device_generator.device, dtype=dtype)
        return generated.to(device)

    def latents(self, shape: Shape, first_unit: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        # The official draw covers every latent frame of the video, the given ones included (image-to-video:
        # temp frames for temp - 1 new units), and unit first_unit + k starts from frame k of it.
        b, c, t, h, w = shape
        return self._device_randn((b, c, first_unit + t, h, w), device, dtype)[:, :, :t]

    def posterior(self, shape: Shape, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return self._device_randn(shape, device, dtype)

    def block_noise(self, shape: Shape, unit: int, stage: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        n_blocks = count_blocks(shape)
        eps = torch.empty(n_blocks * 4, dtype=torch.float32)
        chunk = OFFICIAL_CHUNK_BLOCKS * 4
        for start in range(0, eps.numel(), chunk):
            eps[start : start + chunk].normal_(generator=self.cpu_generator)
        values = correlate_blocks(eps.view(n_blocks, 4), self.factor)
        return blocks_to_image(values, shape).to(device=device, dtype=dtype)


class ReplayNoise:
    """Returns recorded tensors in call order; each call must match the recorded kind and shape."""

    def __init__(self, recorded: List[Tuple[str, torch.Tensor]]):
        """``recorded``: [(kind, tensor)] with kind in {'latents', 'posterior', 'block_noise'}; a 'latents' tensor
        is the official whole-video draw (all frames, as :class:`OfficialNoise` draws it)."""
        self._queue = list(recorded)

    def _next(self, kind: str, shape: Shape, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        if not self._queue:
            raise RuntimeError(f"no recorded noise left for a '{kind}' draw")
        recorded_kind, tensor = self._queue.pop(0)
        if recorded_kind != kind or tuple(tensor.shape) != tuple(shape):
            raise RuntimeError(f"draw order differs: asked {kind} {tuple(shape)}, recorded {recorded_kind} {tuple(tensor.shape)}")
        return tensor.to(device=device, dtype=dtype)

    def latents(self, shape: Shape, first_unit: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        b, c, t, h, w = shape
        return self._next("latents", (b, c, first_unit + t, h, w), device, dtype)[:, :, :t]

    def posterior(self, shape: Shape, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return self._next("posterior", shape, device, dtype)

    def block_noise(self, shape: Shape, unit: int, stage: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return self._next("block_noise", shape, device, dtype)

    @property
    def remaining(self) -> int:
        return len(self._queue)


# name -> factory(seed, gamma, device): the default draws on the CPU whatever the device (the same video on any
# device); the official streams draw where the official app draws, on the sampling device.
NOISE_MODES: Dict[str, Callable[[int, float, torch.device], NoiseSource]] = {
    "default": lambda seed, gamma, device: SeededNoise(seed, gamma),
    "official": lambda seed, gamma, device: OfficialNoise(seed, gamma, device),
}


def make_noise(mode: str, seed: int, gamma: float = 1 / 3, device: torch.device = torch.device("cpu")) -> NoiseSource:
    """The source registered as ``mode`` ("default", "official") for ``seed``; ``device`` is the sampling device."""
    if mode not in NOISE_MODES:
        raise ValueError(f"noise must be one of {sorted(NOISE_MODES)} or a noise source, got '{mode}'")
    return NOISE_MODES[mode](seed, gamma, torch.device(device))


def draw_posterior(noise: NoiseSource, moments: torch.Tensor) -> torch.Tensor:
    """A sample of the VAE posterior: mean + exp(logvar / 2) * noise, logvar clamped to [-30, 20] (the official
    ``DiagonalGaussianDistribution``). moments [B, 2C, T, h, w] (mean ‖ logvar) -> [B, C, T, h, w]."""
    mean, logvar = moments.chunk(2, dim=1)
    eps = noise.posterior(mean.shape, mean.device, mean.dtype)
    return mean + torch.exp(0.5 * logvar.clamp(*LOGVAR_RANGE)) * eps
