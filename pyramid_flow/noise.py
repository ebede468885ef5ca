"""Every random draw of the sampler, from an explicitly seeded generator.

The sampler draws at three sites, always in this order: the initial latent noise, the image posterior sample
(image-to-video only) and, at each stage transition, 2x2-correlated block noise. A noise source answers those
three calls; the sampler never touches a global RNG.

- :class:`NoiseSource` (default): one CPU generator, float32 draws moved to the target device, block noise drawn
  in one vectorised call. The same seed gives the same video on every device.
- :class:`OfficialNoise`: the official app's streams (``torch.manual_seed(seed)``): latents and posterior from the
  sampling device's generator in the model dtype, block noise from the CPU generator in chunks of fewer than 16
  values (which consumes the stream exactly like the official per-block ``MultivariateNormal`` loop).
- :class:`ReplayNoise`: hands back recorded tensors, for parity tests against the official outputs.
"""

import math
from typing import List, Sequence

import torch

Shape = Sequence[int]

# The official sampler's float32 Cholesky factor of the singular block covariance at gamma = 1/3, as torch 2.1.2
# with MKL computes it (reference trap 21). Hard-coded because other LAPACK builds fail on this matrix.
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


def block_covariance(gamma: float) -> torch.Tensor:
    """Covariance of the 4 values of one 2x2 block: (1 + gamma) I - gamma 11^T."""
    return (1 + gamma) * torch.eye(4, dtype=torch.float64) - gamma * torch.ones(4, 4, dtype=torch.float64)


def block_noise_factor(gamma: float) -> torch.Tensor:
    """Lower-triangular L with L L^T = block covariance, exact in float64 even when the matrix is singular."""
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
    return factor.to(torch.float32)


def blocks_to_image(values: torch.Tensor, shape: Shape) -> torch.Tensor:
    """[n_blocks, 4] in (b, c, t, h/2, w/2) block order, (p, q) row-major inside a block -> [B, C, T, H, W]."""
    b, c, t, h, w = shape
    values = values.reshape(b, c, t, h // 2, w // 2, 2, 2).permute(0, 1, 2, 3, 5, 4, 6)
    return values.reshape(b, c, t, h, w)


def _check_block_shape(shape: Shape) -> int:
    b, c, t, h, w = shape
    if h % 2 or w % 2:
        raise ValueError(f"block noise needs an even latent size, got {h}x{w}")
    return b * c * t * (h // 2) * (w // 2)


class NoiseSource:
    """Seeded draws on one CPU generator; block noise is vectorised (one draw for all blocks)."""

    def __init__(self, seed: int, gamma: float = 1 / 3):
        self.generator = torch.Generator("cpu").manual_seed(seed)
        self.factor = block_noise_factor(gamma)

    def _randn(self, shape: Shape) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.generator, dtype=torch.float32)

    def latents(self, shape: Shape, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return self._randn(shape).to(device=device, dtype=dtype)

    def posterior(self, shape: Shape, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return self._randn(shape).to(device=device, dtype=dtype)

    def block_noise(self, shape: Shape, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        eps = self._randn((_check_block_shape(shape), 4))  # [n_blocks, 4] i.i.d.
        return blocks_to_image(eps @ self.factor.T, shape).to(device=device, dtype=dtype)


class OfficialNoise:
    """The official app's random streams for ``seed`` (see the module docstring)."""

    def __init__(self, seed: int, device: torch.device = torch.device("cpu"), gamma: float = 1 / 3):
        device = torch.device(device)
        self.cpu_generator = torch.Generator("cpu").manual_seed(seed)
        self.device_generator = self.cpu_generator if device.type == "cpu" else torch.Generator(device).manual_seed(seed)
        self.factor = OFFICIAL_BLOCK_FACTOR if abs(gamma - 1 / 3) < 1e-12 else block_noise_factor(gamma)

    def _device_randn(self, shape: Shape, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        generated = torch.randn(tuple(shape), generator=self.device_generator, device=self.device_generator.device, dtype=dtype)
        return generated.to(device)

    def latents(self, shape: Shape, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return self._device_randn(shape, device, dtype)

    def posterior(self, shape: Shape, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return self._device_randn(shape, device, dtype)

    def block_noise(self, shape: Shape, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        n_blocks = _check_block_shape(shape)
        eps = torch.empty(n_blocks * 4, dtype=torch.float32)
        chunk = OFFICIAL_CHUNK_BLOCKS * 4
        for start in range(0, eps.numel(), chunk):
            eps[start : start + chunk].normal_(generator=self.cpu_generator)
        values = torch.matmul(self.factor, eps.view(n_blocks, 4, 1)).squeeze(-1)  # per-block L @ eps, as the official
        return blocks_to_image(values, shape).to(device=device, dtype=dtype)


class ReplayNoise:
    """Returns recorded tensors in call order; each call must match the recorded kind and shape."""

    def __init__(self, recorded: List[tuple]):
        """``recorded``: [(kind, tensor)] with kind in {'latents', 'posterior', 'block_noise'}."""
        self._queue = list(recorded)

    def _next(self, kind: str, shape: Shape, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        if not self._queue:
            raise RuntimeError(f"no recorded noise left for a '{kind}' draw")
        recorded_kind, tensor = self._queue.pop(0)
        if recorded_kind != kind or tuple(tensor.shape) != tuple(shape):
            raise RuntimeError(f"draw order differs: asked {kind} {tuple(shape)}, recorded {recorded_kind} {tuple(tensor.shape)}")
        return tensor.to(device=device, dtype=dtype)

    def latents(self, shape: Shape, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return self._next("latents", shape, device, dtype)

    def posterior(self, shape: Shape, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return self._next("posterior", shape, device, dtype)

    def block_noise(self, shape: Shape, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return self._next("block_noise", shape, device, dtype)

    @property
    def remaining(self) -> int:
        return len(self._queue)
