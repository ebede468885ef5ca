"""The pyramidal flow-matching schedule: three stages, each with its own timestep range and Euler grid.

All tables are computed in float64 with numpy, the way the official scheduler computes them under numpy 1.x, so
the timesteps fed to the DiT and the Euler step sizes match bit for bit.
"""

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from .latents import PYRAMID_STAGES


@dataclass(frozen=True)
class Renoise:
    """Stage-transition coefficients: x = alpha * upsample(x) + beta * block_noise."""

    alpha: float
    beta: float


@dataclass(frozen=True)
class StageGrid:
    """The inference grid of one stage: N timesteps (0..1000 scale) and N + 1 sigmas ending at 0."""

    timesteps: torch.Tensor  # [N] float64
    sigmas: torch.Tensor  # [N + 1] float64


class PyramidFlowScheduler:
    def __init__(
        self,
        shift: float = 1.0,
        stages: int = PYRAMID_STAGES,
        stage_range: Sequence[float] = (0, 1 / 3, 2 / 3, 1),
        gamma: float = 1 / 3,
        num_train_timesteps: int = 1000,
    ):
        self.shift = shift
        self.stages = stages
        self.stage_range = list(stage_range)
        self.gamma = gamma
        self.num_train_timesteps = num_train_timesteps
        self.global_timesteps, self.global_sigmas = self._global_tables()
        self.start_sigmas: List[float] = []
        self.end_sigmas: List[float] = []
        self.ori_start_sigmas: List[float] = []
        self._init_stage_endpoints()
        self.timestep_ratios = self._stage_ratios()
        self.timesteps_per_stage: List[torch.Tensor] = []
        self.sigmas_per_stage: List[torch.Tensor] = []
        self._init_stage_tables()

    def _global_tables(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The shifted training schedule in float32: timesteps 1000 .. 1 and sigmas = timesteps / 1000."""
        n = self.num_train_timesteps
        timesteps = torch.from_numpy(np.linspace(1, n, n, dtype=np.float32)[::-1].copy())
        sigmas = timesteps / n
        sigmas = self.shift * sigmas / (1 + (self.shift - 1) * sigmas)
        return sigmas * n, sigmas

    def _init_stage_endpoints(self) -> None:
        n = self.num_train_timesteps
        for i in range(self.stages):
            start_index = max(int(self.stage_range[i] * n), 0)
            end_index = min(int(self.stage_range[i + 1] * n), n)
            start_sigma = self.global_sigmas[start_index].item()
            end_sigma = self.global_sigmas[end_index].item() if end_index < n else 0.0
            self.ori_start_sigmas.append(start_sigma)
            if i > 0:
                start_sigma = 1 - self.renoise(i, start_sigma).alpha * (1 - start_sigma)
            self.start_sigmas.append(start_sigma)
            self.end_sigmas.append(end_sigma)

    def _stage_ratios(self) -> List[Tuple[float, float]]:
        """Each stage's share of the 1000-step axis, proportional to its sigma distance."""
        distances = [start - end for start, end in zip(self.start_sigmas, self.end_sigmas)]
        total = sum(distances)
        ratios = []
        for i in range(self.stages):
            start = 0.0 if i == 0 else sum(distances[:i]) / total
            end = 1.0 if i == self.stages - 1 else sum(distances[: i + 1]) / total
            ratios.append((start, end))
        return ratios

    def _init_stage_tables(self) -> None:
        n = self.num_train_timesteps
        for start_ratio, end_ratio in self.timestep_ratios:
            t_max = self.global_timesteps[int(start_ratio * n)].item()
            t_min = self.global_timesteps[min(int(end_ratio * n), n - 1)].item()
            self.timesteps_per_stage.append(torch.from_numpy(np.linspace(t_max, t_min, n + 1)[:-1]))
            self.sigmas_per_stage.append(torch.from_numpy(np.linspace(1, 0, n + 1)[:-1]))

    def stage_grid(self, num_inference_steps: int, stage: int) -> StageGrid:
        """Timesteps and sigmas of one stage for ``num_inference_steps`` Euler steps."""
        stage_timesteps = self.timesteps_per_stage[stage]
        stage_sigmas = self.sigmas_per_stage[stage]
        timesteps = np.linspace(stage_timesteps[0].item(), stage_timesteps[-1].item(), num_inference_steps)
        sigmas = np.linspace(stage_sigmas[0].item(), stage_sigmas[-1].item(), num_inference_steps)
        sigmas = torch.cat([torch.from_numpy(sigmas), torch.zeros(1, dtype=torch.float64)])
        return StageGrid(timesteps=torch.from_numpy(timesteps), sigmas=sigmas)

    def renoise(self, stage: int, ori_start_sigma: Optional[float] = None) -> Renoise:
        """Coefficients for entering ``stage`` (> 0) from the previous stage's end point.

        With the signal coefficient s = 1 - ori_start_sigma: alpha = 1 / (sqrt(1 + 1/gamma) (1 - s) + s) and
        beta = alpha (1 - s) / sqrt(gamma). The corrected stage start is 1 - alpha s: the official
        ``init_sigmas_for_each_stage`` forms the reciprocal first and multiplies by s after, which is one float64
        ulp away from 1 - s / (...) for some shift and gamma values, so the same order is kept here.
        """
        signal = 1 - (self.ori_start_sigmas[stage] if ori_start_sigma is None else ori_start_sigma)
        alpha = 1 / (math.sqrt(1 + (1 / self.gamma)) * (1 - signal) + signal)
        beta = alpha * (1 - signal) / math.sqrt(self.gamma)
        return Renoise(alpha=alpha, beta=beta)

    @staticmethod
    def step(velocity: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        """One Euler step. ``sigma``s are 0-d float64 tensors; the product with ``velocity`` stays in its dtype."""
        prev = sample.to(torch.float32) + (sigma_next - sigma) * velocity
        return prev.to(velocity.dtype)
