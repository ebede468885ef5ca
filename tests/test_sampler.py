"""Sampler structure with a stand-in DiT: histories, step counts, callbacks, CFG switch, determinism."""

import pytest
import torch

from pyramid_flow.noise import NoiseSource
from pyramid_flow.sampler import PyramidSampler, count_dit_steps, history_clips, noise_pyramid_bottom, stage_steps
from pyramid_flow.text.embeddings import TextEmbeddings

CPU = torch.device("cpu")


class LinearDiT(torch.nn.Module):
    """Velocity = a fixed mix of the current clip, the mean of the history and the text; records the clip shapes."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, clips, context, context_mask, pooled, timestep):
        self.calls.append([tuple(c.shape) for c in clips])
        history = sum(c.mean() for c in clips[:-1]) if len(clips) > 1 else 0.0
        text = pooled.mean(dim=1).view(-1, 1, 1, 1, 1)
        return 0.5 * clips[-1] + 0.1 * history + text + timestep.view(-1, 1, 1, 1, 1) / 1000


def _text(value: float) -> TextEmbeddings:
    return TextEmbeddings(torch.full((1, 128, 8), value), torch.ones(1, 128, dtype=torch.int64), torch.full((1, 4), value))


def _t2v(dit, seed=0, guidance=7.0, temp=3, callback=None):
    sampler = PyramidSampler(dit, NoiseSource(seed), CPU, torch.float32, callback=callback)
    return sampler.text_to_video(_text(1.0), _text(-1.0), height=128, width=192, temp=temp, first_frame_steps=[2, 1, 1],
                                 video_steps=[1, 1, 2], guidance_scale=guidance, video_guidance_scale=5.0)


def test_history_follows_the_temporal_pyramid():
    frames = [torch.randn(1, 16, 1, 16, 24) for _ in range(4)]
    shapes = [[tuple(c.shape[2:]) for c in clips] for clips in history_clips(frames)]
    assert shapes == [
        [(3, 4, 6), (1, 4, 6)],  # stage 0: all older frames in one 1/4 clip, newest at 1/4
        [(3, 4, 6), (1, 8, 12)],
        [(2, 4, 6), (1, 8, 12), (1, 16, 24)],  # newest full, one older at 1/2, the rest at 1/4
    ]
    single = history_clips(frames[:1])
    assert [[tuple(c.shape[2:]) for c in clips] for clips in single] == [[(1, 4, 6)], [(1, 8, 12)], [(1, 16, 24)]]


def test_noise_pyramid_keeps_unit_variance_at_a_quarter_size():
    noise = torch.randn(1, 16, 2, 64, 64, generator=torch.Generator().manual_seed(0))
    bottom = noise_pyramid_bottom(noise)
    assert bottom.shape == (1, 16, 2, 16, 16)
    torch.testing.assert_close(bottom, noise.unflatten(3, (16, 4)).unflatten(5, (16, 4)).mean(dim=(4, 6)) * 4)
    assert abs(bottom.std().item() - 1) < 0.05


def test_t2v_shapes_steps_and_callbacks():
    dit, infos = LinearDiT(), []
    latents = _t2v(dit, callback=infos.append)
    assert latents.shape == (1, 16, 3, 16, 24)
    total = count_dit_steps(3, [2, 1, 1], [1, 1, 2])
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


def test_i2v_keeps_the_image_frame_and_uses_history_from_it():
    dit = LinearDiT()
    image_latent = torch.randn(1, 16, 1, 8, 8)
    sampler = PyramidSampler(dit, NoiseSource(0), CPU, torch.float32)
    latents = sampler.image_to_video(_text(1.0), _text(0.0), image_latent=image_latent, temp=3, steps=1,
                                     guidance_scale=7.0, video_guidance_scale=4.0)
    assert torch.equal(latents[:, :, :1], image_latent)
    assert len(dit.calls) == count_dit_steps(3, 1, 1, i2v=True) == 2 * 3
    assert dit.calls[0][0] == (2, 16, 1, 2, 2)


def test_stage_steps_validation():
    assert stage_steps(4) == [4, 4, 4]
    with pytest.raises(ValueError, match="3 positive integers"):
        stage_steps([1, 2])
    with pytest.raises(ValueError, match="3 positive integers"):
        stage_steps([1, 0, 2])
