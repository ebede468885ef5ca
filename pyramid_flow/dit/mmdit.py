"""The SD3-based Pyramid Flow DiT (official ``pyramid_dit/mmdit_modules/modeling_pyramid_mmdit.py:
PyramidDiffusionMMDiT``).

Shapes: B batch, C latent channels, t/h/w clip size in latent pixels, N image tokens, D model width.
"""

import math
from typing import Dict, List, Mapping, Sequence

import torch
import torch.nn as nn
from einops import rearrange

from .. import ops
from .base import PyramidDiT, count_blocks, head_dim, register_dit
from .embeddings import crop_sincos, sincos_2d_table
from .layers import JointTransformerBlock
from .sequence import frame_ids, token_grid


class PatchEmbed(nn.Module):
    """Per-frame Conv2d patch embedding plus the cropped SD3 sincos table (the checkpoint's ``pos_embed``).

    ``pos_embed`` is a persistent buffer [1, grid*grid, D] stored in the official checkpoint; it is computed
    here too so that a file without it still loads.
    """

    def __init__(self, in_channels, dim, patch_size, grid_size, base_size, interp_condition_pos, dtype=None, device=None, operations=None):
        super().__init__()
        self.dim = dim
        self.patch_size = patch_size
        self.grid_size = grid_size
        self.base_size = base_size
        self.interp_condition_pos = interp_condition_pos
        self.proj = operations.Conv2d(in_channels, dim, patch_size, stride=patch_size, dtype=dtype, device=device)
        if torch.device(device or "cpu").type == "meta":  # filled by load_state_dict(assign=True)
            table = torch.empty(1, grid_size * grid_size, dim, dtype=dtype, device=device)
        else:
            table = self.sincos_table().to(dtype=dtype, device=device)
        self.register_buffer("pos_embed", table)

    def sincos_table(self) -> torch.Tensor:
        """The value of ``pos_embed`` [1, grid*grid, D] float32, for files that do not store it."""
        return sincos_2d_table(self.dim, self.grid_size, self.base_size)

    def embed_clip(self, clip: torch.Tensor, crop) -> torch.Tensor:
        """clip [B, C, t, h*p, w*p] -> [B, t*h*w, D]; ``crop`` = token size (h, w) of the current clip."""
        t, h, w = token_grid(clip, self.patch_size)
        x = self.proj(rearrange(clip, "b c t h w -> (b t) c h w"))  # [B*t, D, h, w]
        x = x.flatten(2).transpose(1, 2)  # [B*t, h*w, D]
        pos = crop_sincos(self.pos_embed, self.grid_size, (h, w), crop if self.interp_condition_pos else (h, w))
        x = (x.float() + pos.to(x.device)).to(x.dtype)  # added in fp32, as the official PatchEmbed3D
        return rearrange(x, "(b t) n d -> b (t n) d", t=t)

    def forward(self, clips: List[torch.Tensor]) -> torch.Tensor:
        crop = token_grid(clips[-1], self.patch_size)[1:]
        return torch.cat([self.embed_clip(clip, crop) for clip in clips], dim=1)  # [B, N, D]


@register_dit("sd3")
class PyramidMMDiT(PyramidDiT):
    """SD3 MMDiT with temporal RoPE over the whole head dim and temporal-causal joint attention.

    Args (official ``config.json`` keys):
        sample_size (int, 128): training latent size; sets the sincos base size sample_size / patch_size.
        patch_size (int, 2): spatial patch size.
        in_channels (int, 16): latent channels (also the output channels).
        num_layers (int, 24): joint blocks; the last one is ``context_pre_only``.
        attention_head_dim (int, 64): head dim d; temporal RoPE covers all of it.
        num_attention_heads (int, 24): heads H; D = H * d.
        caption_projection_dim (int, 1536): width of the projected text; must equal D.
        pooled_projection_dim (int, 2048): pooled CLIP-L + CLIP-G width.
        joint_attention_dim (int, 4096): T5 width.
        pos_embed_max_size (int, 192): side of the sincos table.
        qk_norm (str, 'rms_norm'), pos_embed_type (str, 'sincos'): the only supported values.
        use_temporal_causal (bool, True), interp_condition_pos (bool, True): the official loader sets both.
        Other keys (max_num_frames of the unused temporal sincos table, use_flash_attn, ...) are ignored.
    """

    def __init__(
        self,
        sample_size: int = 128,
        patch_size: int = 2,
        in_channels: int = 16,
        num_layers: int = 24,
        attention_head_dim: int = 64,
        num_attention_heads: int = 24,
        caption_projection_dim: int = 1536,
        pooled_projection_dim: int = 2048,
        joint_attention_dim: int = 4096,
        pos_embed_max_size: int = 192,
        qk_norm: str = "rms_norm",
        pos_embed_type: str = "sincos",
        use_temporal_causal: bool = True,
        interp_condition_pos: bool = True,
        dtype=None,
        device=None,
        operations=None,
        **ignored,
    ):
        operations = operations or ops
        dim = num_attention_heads * attention_head_dim
        check_sd3_config(dim, caption_projection_dim, qk_norm, pos_embed_type)
        super().__init__(
            dim, pooled_projection_dim, joint_attention_dim, in_channels, patch_size, use_temporal_causal,
            dtype=dtype, device=device, operations=operations,
        )
        self.rope_axes = [attention_head_dim]  # temporal only (build_pyramid_dit passes temp_pos_embed_type='rope')
        self.pos_embed = PatchEmbed(
            in_channels, dim, patch_size, pos_embed_max_size, sample_size // patch_size, interp_condition_pos,
            dtype=dtype, device=device, operations=operations,
        )
        self.transformer_blocks = nn.ModuleList(
            JointTransformerBlock(
                dim, num_attention_heads, 1e-5, "norm_add", context_pre_only=i == num_layers - 1,
                dtype=dtype, device=device, operations=operations,
            )
            for i in range(num_layers)
        )

    # kwargs that the official build_pyramid_dit passes on top of config.json
    loader_overrides = {"use_temporal_causal": True, "interp_condition_pos": True}
    inert_config_keys = frozenset({"_class_name", "_diffusers_version", "max_num_frames", "use_flash_attn",
                                   "use_gradient_checkpointing"})

    @classmethod
    def config_from_state_dict(cls, sd: Mapping[str, torch.Tensor]) -> Dict:
        dim, in_channels, patch_size, _ = sd["pos_embed.proj.weight"].shape
        table = sd.get("pos_embed.pos_embed")
        grid = math.isqrt(table.shape[1]) if table is not None else 192
        return {
            # The released models keep pos_embed_max_size = 3 * sample_size / patch_size (192 vs 128 / 2).
            "sample_size": grid * patch_size // 3,
            "patch_size": patch_size,
            "in_channels": in_channels,
            "num_layers": count_blocks(sd, "transformer_blocks."),
            "attention_head_dim": head_dim(sd),
            "num_attention_heads": dim // head_dim(sd),
            "caption_projection_dim": sd["context_embedder.weight"].shape[0],
            "pooled_projection_dim": sd["time_text_embed.text_embedder.linear_1.weight"].shape[1],
            "joint_attention_dim": sd["context_embedder.weight"].shape[1],
            "pos_embed_max_size": grid,
            "qk_norm": "rms_norm",
            "pos_embed_type": "sincos",
        }

    def computed_tensors(self, present: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Single files may lack the sincos buffer ``pos_embed.pos_embed``; it is a function of the config."""
        return {} if "pos_embed.pos_embed" in present else {"pos_embed.pos_embed": self.pos_embed.sincos_table()}

    def clip_positions(self, clips):
        return frame_ids(clips, self.patch_size)[:, None]

    def embed_clips(self, clips):
        return self.pos_embed(clips)

    def run_blocks(self, clips, c, temb, mask, rope):
        x = self.image_tokens(clips, mask)
        for block in self.transformer_blocks:
            c, x = block(x, c, temb, mask, rope)
        return x


def check_sd3_config(dim: int, caption_projection_dim: int, qk_norm: str, pos_embed_type: str) -> None:
    if caption_projection_dim != dim:
        raise ValueError(
            f"caption_projection_dim {caption_projection_dim} must equal num_attention_heads * attention_head_dim "
            f"= {dim}: the text stream joins the image stream in every attention."
        )
    if qk_norm != "rms_norm" or pos_embed_type != "sincos":
        raise ValueError(
            f"Only qk_norm='rms_norm' and pos_embed_type='sincos' (the released Pyramid Flow SD3 configs) are "
            f"supported, got qk_norm={qk_norm!r}, pos_embed_type={pos_embed_type!r}."
        )
