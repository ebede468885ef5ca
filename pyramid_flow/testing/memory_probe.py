"""Peak activation bytes of real-size DiT and VAE calls, tracked without running them: the models are built and
called under ``FakeTensorMode`` (tensors with shapes and no data) and torch's ``MemTracker`` follows every
storage the call allocates and frees. What :mod:`pyramid_flow.memory` estimates is checked against this
(tests/test_memory.py, bench/memory_check.py).

Two stand-ins, both for things fake tensors cannot do:

- the DiT's attention mask splits the sequence by frame with ``unique_consecutive`` (data-dependent), so the
  mask is built beforehand from the real position ids of the same clips (shape-only tensors), then handed in;
- the VAE gets ``torch.nn`` layers: the CPU's oneDNN convolution (:mod:`pyramid_flow.ops`) has no fake kernel.
  ``torch.nn.Conv3d`` is what a GPU runs anyway, with outputs of the same size and layout.

MemTracker's per-module statistics are switched off: they refuse a module called twice (the VAE runs its
decoder once per chunk) and only the global peak is wanted.
"""

from typing import Dict, List, Mapping, Optional, Sequence, Tuple
from unittest import mock

import torch
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.distributed._tools.mem_tracker import MemTracker

from ..dit import DIT_CLASSES, base
from ..dit.sequence import JointMask, frame_ids, joint_attention_mask, with_text_positions
from ..history import history_clips, window_frames
from ..latents import LATENT_CHANNELS, PYRAMID_STAGES, SPATIAL_SCALE
from ..text.embeddings import TEXT_TOKENS
from ..vae import CausalVideoVAE


class PeakTracker(MemTracker):
    """MemTracker without per-module snapshots: the global peak only, for modules called any number of times."""

    def _pre_fw_hook(self, module, inputs) -> None:
        pass

    def _post_fw_hook(self, module, inputs, outputs) -> None:
        pass


def activation_peak(tracker: MemTracker) -> int:
    """Peak bytes of the tensors allocated inside the tracked region (weights and inputs excluded)."""
    snapshot = next(iter(tracker.get_tracker_snapshot("peak").values()))
    return sum(value for key, value in snapshot.items() if getattr(key, "value", key) == "Activation")


def dit_clip_shapes(height: int, width: int, past_frames: int, batch: int,
                    history_window: Optional[int] = None) -> List[Tuple[int, ...]]:
    """Shapes of the clips of a unit's last-stage DiT call, as the sampler builds them (history, then the current
    frame), with the CFG-doubled ``batch``."""
    h, w = height // SPATIAL_SCALE, width // SPATIAL_SCALE
    history = len(window_frames(past_frames, history_window))
    clips = history_clips(torch.zeros(1, LATENT_CHANNELS, history, h, w), PYRAMID_STAGES)[-1] if history else []
    return [(batch, *clip.shape[1:]) for clip in clips] + [(batch, LATENT_CHANNELS, 1, h, w)]


def real_mask(shapes: Sequence[Tuple[int, ...]], patch_size: int) -> JointMask:
    """The DiT's attention mask for clips of ``shapes`` (all text tokens real), from its own position code."""
    clips = [torch.zeros(()).expand(shape) for shape in shapes]
    times = with_text_positions(frame_ids(clips, patch_size)[:, None], TEXT_TOKENS)[:, 0]
    return joint_attention_mask(torch.ones(shapes[0][0], TEXT_TOKENS), times)


def tracked_dit_peak(variant: str, config: Mapping, height: int, width: int, past_frames: int, batch: int = 2,
                     dtype: torch.dtype = torch.bfloat16, history_window: Optional[int] = None) -> int:
    """Peak activation bytes of the last-stage DiT call of unit ``past_frames``, tracked on the fake model built
    from ``config`` (constructor kwargs; {} for the official sizes)."""
    shapes = dit_clip_shapes(height, width, past_frames, batch, history_window)
    with FakeTensorMode() as fake:
        dit = DIT_CLASSES[variant](**config, dtype=dtype)
        with unset_fake_temporarily():
            mask = real_mask(shapes, dit.patch_size)
        mask = JointMask(fake.from_tensor(mask.key_mask), mask.segments, mask.text_tokens, mask.text_lengths)
        clips = [torch.zeros(shape, dtype=dtype) for shape in shapes]
        context = torch.zeros(batch, TEXT_TOKENS, dit.context_embedder.in_features, dtype=dtype)
        context_mask = torch.ones(batch, TEXT_TOKENS, dtype=torch.long)
        pooled = torch.zeros(batch, dit.time_text_embed.text_embedder.linear_1.in_features, dtype=dtype)
        timestep = torch.zeros(batch, dtype=dtype)
        tracker = PeakTracker()
        tracker.track_external(dit, *clips, context, context_mask, pooled, timestep, mask.key_mask)
        with mock.patch.object(base, "joint_attention_mask", lambda *args: mask), tracker, torch.no_grad():
            dit(clips, context, context_mask, pooled, timestep)
    return activation_peak(tracker)


def tracked_vae_peak(decode: bool, shape: Sequence[int], window_size: int, tile_sample_min_size: Optional[int],
                     tile_overlap: float = 0.25, dtype: torch.dtype = torch.bfloat16,
                     config: Optional[Dict] = None) -> int:
    """Peak bytes of a chunked VAE decode (``shape`` = latent [B, 16, T, h, w]) or encode (video [B, 3, F, H, W]),
    tracked on the fake model; the encode's input video is counted, as in the estimate."""
    with FakeTensorMode():
        vae = CausalVideoVAE(**(config or {}), dtype=dtype, operations=torch.nn)
        x = torch.zeros(shape, dtype=dtype)
        tracker = PeakTracker()
        tracker.track_external(vae, x)
        run = vae.decode if decode else vae.encode
        with tracker, torch.no_grad():
            run(x, temporal_chunk=True, window_size=window_size, tile_sample_min_size=tile_sample_min_size,
                tile_overlap=tile_overlap)
    return activation_peak(tracker) + (0 if decode else x.nbytes)
