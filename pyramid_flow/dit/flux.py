"""The miniFLUX Pyramid Flow DiT (official ``pyramid_dit/flux_modules/modeling_pyramid_flux.py:
PyramidFluxTransformer``).

Shapes: B batch, C latent channels, Lt text tokens, N image tokens, D model width.
"""

from typing import Dict, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from .base import PyramidDiT, count_blocks, head_dim, register_dit
from .layers import AdaLayerNormZeroSingle, JointTransformerBlock, SelfAttention, attend, per_token_chunks
from .sequence import flux_position_ids, patchify

FLUX_PATCH_SIZE = 2  # the official model hard-codes 2; config.json's patch_size (1) is not used
FLUX_ROPE_AXES = [16, 24, 24]  # forced by the official build_pyramid_dit whatever config.json says


class FluxSingleTransformerBlock(nn.Module):
    """Single-stream block over [text; image]: parallel attention and MLP, one gated output projection."""

    def __init__(self, dim: int, heads: int, dtype=None, device=None, operations=None):
        super().__init__()
        self.norm = AdaLayerNormZeroSingle(dim, dtype=dtype, device=device, operations=operations)
        self.proj_mlp = operations.Linear(dim, 4 * dim, dtype=dtype, device=device)
        self.proj_out = operations.Linear(5 * dim, dim, dtype=dtype, device=device)
        self.attn = SelfAttention(dim, heads, 1e-6, dtype=dtype, device=device, operations=operations)

    def forward(self, x, temb, mask, rope) -> torch.Tensor:
        """x [B, Lt+N, D], temb [B, D] -> [B, Lt+N, D].

        The attention runs first and the MLP after it over chunks of tokens (the branches are independent), so
        the 4D MLP activation is never alive beside the attention's tensors and exists for one chunk at a time."""
        x_mod, gate = self.norm(x, temb)
        attn = attend(*self.attn.qkv(x_mod, rope), mask)  # [B, L, D]
        out = per_token_chunks(self.mlp_and_output, x_mod, attn, out=attn)  # [B, L, D], over attn piece by piece
        return out.mul_(gate[:, None]).add_(x)  # x + gate * out

    def mlp_and_output(self, x_mod: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """x_mod, attn [B, l, D] -> proj_out([attn; GELU(proj_mlp(x_mod))]) [B, l, D]."""
        return self.proj_out(torch.cat([attn, F.gelu(self.proj_mlp(x_mod), approximate="tanh")], dim=2))


@register_dit("miniflux")
class PyramidFluxDiT(PyramidDiT):
    """miniFLUX: double (joint) blocks, then single blocks over [text; image], 3-axis RoPE.

    Args (official ``config.json`` keys):
        in_channels (int, 64): patchified channels = 4 * latent channels.
        num_layers (int, 8): double blocks.
        num_single_layers (int, 16): single blocks.
        attention_head_dim (int, 64): head dim; must be 64, the sum of the forced RoPE axes (16, 24, 24).
        num_attention_heads (int, 30): heads; D = heads * 64.
        joint_attention_dim (int, 4096): T5 width.
        pooled_projection_dim (int, 768): CLIP-L pooler width.
        use_temporal_causal (bool, True): the official loader sets it.
        Other keys (patch_size, axes_dims_rope, interp_condition_pos, use_flash_attn, ...) are ignored: the
        official model hard-codes patch 2, its loader forces the RoPE axes, and the history positions are
        always interpolated.
    """

    def __init__(
        self,
        in_channels: int = 64,
        num_layers: int = 8,
        num_single_layers: int = 16,
        attention_head_dim: int = 64,
        num_attention_heads: int = 30,
        joint_attention_dim: int = 4096,
        pooled_projection_dim: int = 768,
        use_temporal_causal: bool = True,
        dtype=None,
        device=None,
        operations=None,
        **ignored,
    ):
        operations = operations or ops
        if attention_head_dim != sum(FLUX_ROPE_AXES):
            raise ValueError(
                f"attention_head_dim {attention_head_dim} must be {sum(FLUX_ROPE_AXES)}: the official loader forces "
                f"RoPE axes {FLUX_ROPE_AXES}, which fill the whole head."
            )
        dim = num_attention_heads * attention_head_dim
        super().__init__(
            dim, pooled_projection_dim, joint_attention_dim, in_channels // 4, FLUX_PATCH_SIZE, use_temporal_causal,
            dtype=dtype, device=device, operations=operations,
        )
        self.rope_axes = FLUX_ROPE_AXES
        self.x_embedder = operations.Linear(in_channels, dim, dtype=dtype, device=device)
        kw = dict(dtype=dtype, device=device, operations=operations)
        self.transformer_blocks = nn.ModuleList(
            JointTransformerBlock(dim, num_attention_heads, 1e-6, "norm_added", **kw) for _ in range(num_layers)
        )
        self.single_transformer_blocks = nn.ModuleList(
            FluxSingleTransformerBlock(dim, num_attention_heads, **kw) for _ in range(num_single_layers)
        )

    # kwargs that the official build_pyramid_dit passes on top of config.json
    loader_overrides = {"use_temporal_causal": True, "interp_condition_pos": True, "axes_dims_rope": FLUX_ROPE_AXES}
    inert_config_keys = frozenset({"_class_name", "_diffusers_version", "patch_size", "axes_dims_rope",
                                   "interp_condition_pos", "use_flash_attn", "use_gradient_checkpointing"})

    @classmethod
    def config_from_state_dict(cls, sd: Mapping[str, torch.Tensor]) -> Dict:
        dim, in_channels = sd["x_embedder.weight"].shape
        return {
            "in_channels": in_channels,
            "num_layers": count_blocks(sd, "transformer_blocks."),
            "num_single_layers": count_blocks(sd, "single_transformer_blocks."),
            "attention_head_dim": head_dim(sd),
            "num_attention_heads": dim // head_dim(sd),
            "joint_attention_dim": sd["context_embedder.weight"].shape[1],
            "pooled_projection_dim": sd["time_text_embed.text_embedder.linear_1.weight"].shape[1],
        }

    def clip_positions(self, clips):
        return flux_position_ids(clips, self.patch_size)

    def embed_clips(self, clips):
        tokens = torch.cat([patchify(clip, self.patch_size) for clip in clips], dim=1)  # [B, N, 4C]
        return self.x_embedder(tokens)

    def run_blocks(self, clips, c, temb, mask, rope):
        x = self.image_tokens(clips, mask)
        for block in self.transformer_blocks:
            c, x = block(x, c, temb, mask, rope)
        x = torch.cat([c, x], dim=1)  # [B, Lt+N, D]
        for block in self.single_transformer_blocks:
            x = block(x, temb, mask, rope)
        return x[:, c.shape[1] :]
