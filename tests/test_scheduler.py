"""The pyramid schedule beyond the golden set's shift and gamma values, against the official expressions."""

import math

import pytest

from pyramid_flow.scheduler import PyramidFlowScheduler

SHIFTS = [0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 7.0, 12.0]
GAMMAS = [1 / 3, 0.3, 0.25, 0.2, 0.05]


def official_stage_start(ori_start_sigma: float, gamma: float) -> float:
    """``init_sigmas_for_each_stage`` of the official scheduler, in its operation order: the reciprocal, then the
    product with the signal coefficient."""
    signal = 1 - ori_start_sigma
    corrected = (1 / (math.sqrt(1 + (1 / gamma)) * (1 - signal) + signal)) * signal
    return 1 - corrected


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("shift", SHIFTS)
def test_stage_starts_follow_the_official_operation_order(shift, gamma):
    scheduler = PyramidFlowScheduler(shift=shift, gamma=gamma)
    expected = [1.0] + [official_stage_start(s, gamma) for s in scheduler.ori_start_sigmas[1:]]
    assert scheduler.start_sigmas == expected  # float64, bit for bit
    assert scheduler.ori_start_sigmas[0] == 1.0 and scheduler.end_sigmas[-1] == 0.0
    for stage in (1, 2):
        renoise = scheduler.renoise(stage)
        signal = 1 - scheduler.ori_start_sigmas[stage]
        assert renoise.beta == renoise.alpha * (1 - signal) / math.sqrt(gamma)
        assert 1 - renoise.alpha * signal == scheduler.start_sigmas[stage]


def test_the_operation_order_matters_for_these_values():
    """1 - s / (...) is algebraically the same but one ulp off for some of the values above: the test above can
    tell the two apart."""
    differs = 0
    for shift in SHIFTS:
        for gamma in GAMMAS:
            for ori in PyramidFlowScheduler(shift=shift, gamma=gamma).ori_start_sigmas[1:]:
                signal = 1 - ori
                differs += official_stage_start(ori, gamma) != 1 - signal / (math.sqrt(1 + 1 / gamma) * (1 - signal) + signal)
    assert differs > 0


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("shift", SHIFTS)
def test_stage_grids_are_monotonic_and_cover_the_stage(shift, gamma):
    scheduler = PyramidFlowScheduler(shift=shift, gamma=gamma)
    previous_end = None
    for stage in range(scheduler.stages):
        grid = scheduler.stage_grid(5, stage)
        assert grid.sigmas[0] == 1.0 and grid.sigmas[-1] == 0.0 and len(grid.sigmas) == 6
        assert (grid.timesteps[1:] < grid.timesteps[:-1]).all()
        if previous_end is not None:
            assert grid.timesteps[0] <= previous_end + 1e-9  # stages follow each other down the 1000-step axis
        previous_end = scheduler.timesteps_per_stage[stage][-1].item()
