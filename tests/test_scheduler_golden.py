"""The pyramid schedule against the official scheduler's tables (bit-exact, float64)."""

import re

import pytest
import torch

from golden import case_params, require_case, tensors
from tolerance import assert_within_ulps
from pyramid_flow.scheduler import PyramidFlowScheduler


def _schedulers(case):
    for config in case["configs"]:
        scheduler = PyramidFlowScheduler(
            shift=config["shift"],
            stages=config["stages"],
            stage_range=config["stage_range"],
            gamma=config["gamma"],
            num_train_timesteps=config["num_train_timesteps"],
        )
        yield config, scheduler, f"shift{config['shift']:g}"


@pytest.mark.parametrize("case", case_params("scheduler"))
def test_stage_endpoints_and_renoise(case):
    for config, scheduler, _ in _schedulers(require_case(case)):
        assert scheduler.start_sigmas == config["start_sigmas"]
        assert scheduler.end_sigmas == config["end_sigmas"]
        assert scheduler.ori_start_sigmas == config["ori_start_sigmas"]
        assert [list(r) for r in scheduler.timestep_ratios] == config["timestep_ratios"]
        for entry in config["renoise"]:
            coefficients = scheduler.renoise(entry["stage"])
            assert (coefficients.alpha, coefficients.beta) == (entry["alpha"], entry["beta"])


@pytest.mark.parametrize("case", case_params("scheduler"))
def test_tables_are_bit_exact(case):
    case = require_case(case)
    recorded = tensors(case["file"])
    for config, scheduler, prefix in _schedulers(case):
        assert torch.equal(scheduler.global_timesteps, recorded[f"{prefix}/global_timesteps_after_init"])
        assert torch.equal(scheduler.global_sigmas, recorded[f"{prefix}/global_sigmas_after_init"])
        for stage in range(config["stages"]):
            assert torch.equal(scheduler.timesteps_per_stage[stage], recorded[f"{prefix}/stage{stage}/timesteps_per_stage"])
            assert torch.equal(scheduler.sigmas_per_stage[stage], recorded[f"{prefix}/stage{stage}/sigmas_per_stage"])
        for entry in config["set_timesteps"]:
            grid = scheduler.stage_grid(entry["num_inference_steps"], entry["stage"])
            key = f"{prefix}/n{entry['num_inference_steps']}/stage{entry['stage']}"
            assert torch.equal(grid.timesteps, recorded[f"{key}/timesteps"])
            assert torch.equal(grid.sigmas, recorded[f"{key}/sigmas"])
            assert grid.timesteps.tolist() == entry["timesteps"]


def _euler_demo_call(description: str):
    """(steps, stage, seed) from e.g. 'set_timesteps(3, stage=1); x0 = ... (randn seed 7, first draw); ...'."""
    steps, stage = re.search(r"set_timesteps\((\d+), stage=(\d+)\)", description).groups()
    seed = re.search(r"randn seed (\d+)", description).group(1)
    return int(steps), int(stage), int(seed)


@pytest.mark.parametrize("case", case_params("scheduler"))
def test_euler_steps(case):
    """The demo: x0 = randn(seed) of the velocity's shape, then Euler steps of one stage with a fixed velocity."""
    case = require_case(case)
    recorded = tensors(case["file"])
    for config, scheduler, prefix in _schedulers(case):
        steps, stage, seed = _euler_demo_call(config["euler_demo"])
        velocity = recorded[f"{prefix}/euler_demo/velocity"]
        expected = recorded[f"{prefix}/euler_demo/x_after_each_step"]
        assert expected.shape[0] == steps
        sample = torch.randn(velocity.shape, generator=torch.Generator().manual_seed(seed))
        grid = scheduler.stage_grid(steps, stage)
        for k in range(expected.shape[0]):
            sample = scheduler.step(velocity, sample, grid.sigmas[k], grid.sigmas[k + 1])
            # x0 is a float32 randn, whose last bits differ between CPU instruction sets (AVX-512 vs generic)
            assert_within_ulps(sample, expected[k], name=f"{prefix} euler step {k}")
