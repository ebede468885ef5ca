"""Sampler structure with a stand-in DiT: histories, step counts, callbacks, CFG switch, determinism."""

import warnings

import pytest
import torch

from pyramid_flow.noise import SeededNoise
from pyramid_flow.history import history_clips, max_sequence_length, window_frames
from pyramid_flow import sampler as sampler_module
from pyramid_flow.sampler import PyramidSampler, count_dit_steps, noise_pyramid_bottom, stage_steps
from pyramid_flow.text.embeddings import TextEmbeddings
from pyramid_flow.text.schedule import PromptSchedule
from pyramid_flow.variants import MINIFLUX

CPU = torch.device("cpu")


class LinearDiT(torch.nn.Module):
    """Velocity = a fixed mix of the current clip, the mean of the history and the text; records the clip shapes."""

    def __init__(self):
        super().__init__()
        self.calls, self.pooled = [], []

    def forward(self, clips, context, context_mask, pooled, timestep):
        self.calls.append([tuple(c.shape) for c in clips])
        self.pooled.append(pooled[:, 0].clone())
        history = sum(c.mean() for c in clips[:-1]) if len(clips) > 1 else 0.0
        text = pooled.mean(dim=1).view(-1, 1, 1, 1, 1)
        return 0.5 * clips[-1] + 0.1 * history + text + timestep.view(-1, 1, 1, 1, 1) / 1000


def _text(value: float) -> TextEmbeddings:
    return TextEmbeddings(torch.full((1, 128, 8), value), torch.ones(1, 128, dtype=torch.int64), torch.full((1, 4), value))


def _t2v(dit, seed=0, guidance=7.0, temp=3, callback=None, cond=None, **kwargs):
    sampler = PyramidSampler(dit, SeededNoise(seed), CPU, torch.float32, callback=callback)
    return sampler.text_to_video(cond or _text(1.0), _text(-1.0), height=128, width=192, latent_frames=temp,
                                 first_frame_steps=[2, 1, 1], video_steps=[1, 1, 2], guidance_scale=guidance,
                                 video_guidance_scale=5.0, **kwargs)


def _extend(dit, history, units, seed=0, **kwargs):
    sampler = PyramidSampler(dit, SeededNoise(seed), CPU, torch.float32)
    return sampler.extend(_text(1.0), _text(-1.0), history=history, new_latent_frames=units, steps=[1, 1, 2], guidance_scale=7.0,
                          video_guidance_scale=5.0, **kwargs)


def test_history_follows_the_temporal_pyramid():
    frames = torch.randn(1, 16, 4, 16, 24)
    shapes = [[tuple(c.shape[2:]) for c in clips] for clips in history_clips(frames, 3)]
    assert shapes == [
        [(3, 4, 6), (1, 4, 6)],  # stage 0: all older frames in one 1/4 clip, newest at 1/4
        [(3, 4, 6), (1, 8, 12)],
        [(2, 4, 6), (1, 8, 12), (1, 16, 24)],  # newest full, one older at 1/2, the rest at 1/4
    ]
    single = history_clips(frames[:, :, :1], 3)
    assert [[tuple(c.shape[2:]) for c in clips] for clips in single] == [[(1, 4, 6)], [(1, 8, 12)], [(1, 16, 24)]]


def test_noise_pyramid_keeps_unit_variance_at_a_quarter_size():
    noise = torch.randn(1, 16, 2, 64, 64, generator=torch.Generator().manual_seed(0))
    bottom = noise_pyramid_bottom(noise, 3)
    assert bottom.shape == (1, 16, 2, 16, 16)
    torch.testing.assert_close(bottom, noise.unflatten(3, (16, 4)).unflatten(5, (16, 4)).mean(dim=(4, 6)) * 4)
    assert abs(bottom.std().item() - 1) < 0.05


def test_t2v_shapes_steps_and_callbacks():
    dit, infos = LinearDiT(), []
    latents = _t2v(dit, callback=infos.append)
    assert latents.shape == (1, 16, 3, 16, 24)
    total = count_dit_steps(3, [2, 1, 1], [1, 1, 2], 3, from_scratch=True)
    assert total == 4 + 2 * 4 == len(dit.calls) == len(infos)
    assert [i.done for i in infos] == list(range(1, total + 1)) and infos[-1].total == total
    assert dit.calls[0] == [(2, 16, 1, 4, 6)]  # unit 0, stage 0: no history, CFG-doubled batch
    assert dit.calls[-1] == [(2, 16, 1, 8, 12), (2, 16, 1, 16, 24), (2, 16, 1, 16, 24)]  # unit 2, stage 2
    assert [i.unit for i in infos][:5] == [0, 0, 0, 0, 1]


def test_seed_reproduces_and_changes_the_result():
    assert torch.equal(_t2v(LinearDiT(), seed=4), _t2v(LinearDiT(), seed=4))
    assert not torch.equal(_t2v(LinearDiT(), seed=4), _t2v(LinearDiT(), seed=5))


def test_guidance_zero_turns_cfg_off():
    dit = LinearDiT()
    _t2v(dit, guidance=0.0, temp=1)
    assert all(shape[0][0] == 1 for shape in dit.calls)


def test_callback_exception_stops_the_run_within_one_step():
    dit = LinearDiT()

    def interrupt(info):
        if info.done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _t2v(dit, callback=interrupt)
    assert len(dit.calls) == 3


def test_i2v_draws_the_image_sample_after_the_video_noise_and_keeps_it():
    dit = LinearDiT()
    moments = torch.cat([torch.randn(1, 16, 1, 8, 8), torch.full((1, 16, 1, 8, 8), -2.0)], dim=1)
    sampler = PyramidSampler(dit, SeededNoise(0), CPU, torch.float32)
    latents = sampler.image_to_video(_text(1.0), _text(0.0), image_moments=moments, variant=MINIFLUX, latent_frames=3, steps=1,
                                     guidance_scale=7.0, video_guidance_scale=4.0)
    sample = moments[:, :16] + torch.exp(0.5 * moments[:, 16:]) * SeededNoise(0).posterior((1, 16, 1, 8, 8), CPU, torch.float32)
    assert torch.equal(latents[:, :, :1], (sample - MINIFLUX.image_norm.shift) * MINIFLUX.image_norm.scale)
    assert len(dit.calls) == count_dit_steps(2, 1, 1, 3, from_scratch=False) == 2 * 3
    assert dit.calls[0][0] == (2, 16, 1, 2, 2)


def test_extending_equals_generating_in_one_run():
    """T + N frames in one run == T frames, then extended by N (same seed): units keep their noise."""
    whole = _t2v(LinearDiT(), seed=9, temp=5)
    first = _t2v(LinearDiT(), seed=9, temp=3)
    assert torch.equal(first, whole[:, :, :3])
    extended = _extend(LinearDiT(), first, 2, seed=9)
    assert torch.equal(extended, whole)
    assert torch.equal(_extend(_extend_dit := LinearDiT(), _extend(LinearDiT(), first, 1, seed=9), 1, seed=9), whole)
    assert len(_extend_dit.calls) == 4  # one unit of 1 + 1 + 2 steps


def test_history_window_keeps_the_first_and_the_newest_frames():
    assert window_frames(3, None) == [0, 1, 2] and window_frames(3, 3) == [0, 1, 2]
    assert window_frames(8, 3) == [0, 6, 7]
    whole = _t2v(LinearDiT(), seed=2, temp=4)
    assert torch.equal(_t2v(LinearDiT(), seed=2, temp=4, history_window=3), whole)  # the window covers all 3 past frames
    assert not torch.equal(_t2v(LinearDiT(), seed=2, temp=4, history_window=2), whole)
    with pytest.raises(ValueError, match="history_window 1"):
        _t2v(LinearDiT(), temp=2, history_window=1)


def test_windowed_calls_keep_a_flat_token_count():
    dit = LinearDiT()
    _t2v(dit, temp=9, history_window=3)
    last_stage_tokens = [sum(t * h * w // 4 for _, _, t, h, w in call) for call in dit.calls if call[-1][3] == 16]
    # stage-2 calls: 1 for unit 0, then 2 per unit; from unit 3 on (window full) every unit sees as many tokens
    assert len(last_stage_tokens) == 1 + 2 * 8 and len(set(last_stage_tokens[5:])) == 1
    unbounded = LinearDiT()
    _t2v(unbounded, temp=9)
    assert sum(t * h * w for _, _, t, h, w in unbounded.calls[-1]) > sum(t * h * w for _, _, t, h, w in dit.calls[-1])


@pytest.mark.parametrize("temp", [1, 2, 3, 6])
def test_max_sequence_length_counts_the_last_call(temp):
    dit = LinearDiT()
    _t2v(dit, temp=temp)
    image_tokens = sum(t * h * w // 4 for _, _, t, h, w in dit.calls[-1])
    assert max_sequence_length(128, 192, temp - 1) == image_tokens + 128


def test_prompt_schedule_switches_the_conditioning_at_its_unit():
    dit = LinearDiT()
    schedule = PromptSchedule(((0, _text(1.0)), (2, _text(3.0))))
    _t2v(dit, temp=4, cond=schedule)
    steps_per_unit = [4, 4, 4, 4]
    pooled = []
    start = 0
    for count in steps_per_unit:
        pooled.append(dit.pooled[start][1].item())
        start += count
    assert pooled == [1.0, 1.0, 3.0, 3.0]  # positive row of the CFG batch
    assert all(p[0].item() == -1.0 for p in dit.pooled)  # the negative prompt stays one prompt


def test_stage_steps_validation():
    assert stage_steps(4, 3) == [4, 4, 4]
    with pytest.raises(ValueError, match="3 positive integers"):
        stage_steps([1, 2], 3)
    with pytest.raises(ValueError, match="3 positive integers"):
        stage_steps([1, 0, 2], 3)


def test_a_video_beyond_the_trained_length_warns_with_its_memory(monkeypatch):
    """Past 31 latent frames without a window the warning names the fix and, from the memory model, the
    activations of the last frame with and without the suggested window."""
    asked = []

    def activation_bytes(shape, height, width, past_frames, batch, dtype, history_window=None):
        asked.append((shape, height, width, past_frames, batch, history_window))
        return (3 if history_window is None else 1) * 2**30

    monkeypatch.setattr(sampler_module.DiTShape, "of_model", classmethod(lambda cls, dit: "shape"))
    monkeypatch.setattr(sampler_module, "dit_activation_bytes", activation_bytes)
    with pytest.warns(UserWarning, match=r"history_window.*3\.0 GiB.*history_window 16, 1\.0 GiB"):
        _t2v(LinearDiT(), temp=32)
    assert asked == [("shape", 128, 192, 31, 2, None), ("shape", 128, 192, 31, 2, 16)]  # CFG batch 2, the last unit
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _t2v(LinearDiT(), temp=32, history_window=16)
