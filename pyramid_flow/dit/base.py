"""What both Pyramid Flow DiTs share: conditioning, the [text; image] sequence, the output head.

Shapes: B batch, Lt text tokens, N image tokens, D model width, P pooled text width, n position axes.
"""

from typing import Callable, ClassVar, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple, Type

import torch
import torch.nn as nn

from ..attention import SDPA, AttentionBackend
from .embeddings import TimestepTextEmbedding, rope_cos_sin
from .layers import AdaLayerNormContinuous, Rope
from .sequence import JointMask, joint_attention_mask, token_grid, unpatchify, with_text_positions
from .sequence_parallel import SequenceSplit


class PyramidDiT(nn.Module):
    """Base of :class:`PyramidMMDiT` and :class:`PyramidFluxDiT`.

    Subclasses build their blocks and implement ``clip_positions`` (the image tokens' RoPE positions),
    ``embed_clips`` (the image tokens), ``run_blocks`` (which embeds the clips itself, so the embedded tokens live
    no longer than the first block needs them) and ``config_from_state_dict``; ``rope_axes`` lists the RoPE dims per position axis;
    ``loader_overrides`` are the kwargs the official loader passes on top of config.json; ``inert_config_keys``
    the official config.json keys that change nothing at inference (any other unknown key is reported on loading).
    """

    rope_axes: Sequence[int]
    loader_overrides: ClassVar[Dict] = {}
    inert_config_keys: ClassVar[FrozenSet[str]] = frozenset()

    @classmethod
    def config_from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> Dict:
        """The official config.json values recoverable from tensor shapes (for single files without one)."""
        raise NotImplementedError

    def computed_tensors(self, present: Sequence[str]) -> Dict[str, torch.Tensor]:
        """The tensors a file may leave out because they are computed, for the keys not in ``present``."""
        return {}

    def __init__(
        self,
        inner_dim: int,
        pooled_projection_dim: int,
        joint_attention_dim: int,
        out_channels: int,
        patch_size: int,
        use_temporal_causal: bool,
        dtype=None,
        device=None,
        operations=None,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.out_channels = out_channels
        self.use_temporal_causal = use_temporal_causal
        self.attention_backend = SDPA  # the attention kernel of every call that does not pass one
        self.text_dims = (joint_attention_dim, pooled_projection_dim)  # (T5 width, pooled width) of its text input
        kw = dict(dtype=dtype, device=device, operations=operations)
        self.time_text_embed = TimestepTextEmbedding(inner_dim, pooled_projection_dim, **kw)
        self.context_embedder = operations.Linear(joint_attention_dim, inner_dim, dtype=dtype, device=device)
        self.norm_out = AdaLayerNormContinuous(inner_dim, **kw)
        self.proj_out = operations.Linear(inner_dim, patch_size * patch_size * out_channels, dtype=dtype, device=device)

    def clip_positions(self, clips: List[torch.Tensor]) -> torch.Tensor:
        """clips -> positions [N, n] of their image tokens, the temporal id in column 0."""
        raise NotImplementedError

    def embed_clips(self, clips: List[torch.Tensor]) -> torch.Tensor:
        """clips -> image tokens [B, N, D]."""
        raise NotImplementedError

    def run_blocks(self, clips: List[torch.Tensor], c: torch.Tensor, temb: torch.Tensor, mask: JointMask,
                   rope: Rope) -> torch.Tensor:
        """The transformer blocks over the embedded clips: image tokens [B, N, D] out; text c [B, Lt, D]."""
        raise NotImplementedError

    def image_tokens(self, clips: List[torch.Tensor], mask: JointMask) -> torch.Tensor:
        """The embedded image tokens of the clips [B, N, D]; under sequence parallel this rank's share [B, n, D]."""
        x = self.embed_clips(clips)
        return x if mask.split is None else mask.split.local_tokens(x)

    def forward(
        self,
        clips: List[torch.Tensor],
        context: torch.Tensor,
        context_mask: torch.Tensor,
        pooled: torch.Tensor,
        timestep: torch.Tensor,
        attention_backend: Optional[AttentionBackend] = None,
        sequence_split: Optional[SequenceSplit] = None,
    ) -> torch.Tensor:
        """Velocity of the last clip.

        clips: [B, C, t_i, h_i, w_i] each, history first, the noisy clip last; context [B, Lt, D_text] (T5);
        context_mask [B, Lt] (1 = real token); pooled [B, P]; timestep [B] on the 0-1000 scale;
        attention_backend: this call's attention kernel (default: the model's ``attention_backend``);
        sequence_split: this rank's share of the image tokens under sequence parallel (every rank of the split
        gets the same inputs and returns the same velocity).
        Returns [B, C, t, h, w] for ``clips[-1]``.
        """
        temb = self.time_text_embed(timestep, pooled)  # [B, D]
        c = self.context_embedder(context)  # [B, Lt, D]
        image_positions = self.clip_positions(clips)  # [N, n]
        tokens = image_positions.shape[0]
        mask = joint_attention_mask(context_mask, with_text_positions(image_positions, c.shape[1])[:, 0],
                                    self.use_temporal_causal, attention_backend or self.attention_backend,
                                    sequence_split)
        if sequence_split is not None:
            image_positions = sequence_split.local_tokens(image_positions[None])[0]  # [n, n_axes]
        rope = rope_cos_sin(with_text_positions(image_positions, c.shape[1]), self.rope_axes)
        x = self.run_blocks(clips, c, temb, mask, rope)  # [B, N, D]; under sequence parallel [B, n, D]
        grid = token_grid(clips[-1], self.patch_size)
        last = grid[0] * grid[1] * grid[2]  # tokens of the last clip, the end of the sequence
        if sequence_split is None:
            x = self.proj_out(self.norm_out(x[:, tokens - last :], temb))  # [B, last, p*p*C]
        else:  # the output head is token-wise: each rank runs its share, then the shares are gathered
            x = sequence_split.all_tokens(self.proj_out(self.norm_out(x, temb)), tokens)[:, tokens - last :]
        return unpatchify(x, grid, self.patch_size)

    @property
    def attention_heads(self) -> int:
        return self.transformer_blocks[0].attn.heads


DIT_CLASSES: Dict[str, Type[PyramidDiT]] = {}


def register_dit(variant_name: str) -> Callable[[Type[PyramidDiT]], Type[PyramidDiT]]:
    """Class decorator: the DiT of the variant registered as ``variant_name`` in :mod:`pyramid_flow.variants`."""

    def register(cls: Type[PyramidDiT]) -> Type[PyramidDiT]:
        DIT_CLASSES[variant_name] = cls
        return cls

    return register


def count_blocks(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    """How many ``prefix<N>.`` blocks the state dict holds."""
    return len({key[len(prefix) :].split(".", 1)[0] for key in state_dict if key.startswith(prefix)})


def head_dim(state_dict: Mapping[str, torch.Tensor]) -> int:
    """The attention head dim: the size of the first QK-norm scale."""
    return next(v.shape[0] for k, v in state_dict.items() if k.endswith("attn.norm_q.weight"))
