"""The text conditioning the DiT consumes, whoever computed it.

``PyramidTextEncoder.encode`` returns it, and it can be built directly from embeddings computed elsewhere
(ComfyUI's own CLIP/T5 loaders): ``TextEmbeddings(prompt_embeds, attention_mask, pooled).validate(...)``.
"""

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

from ..variants import get_variant

TEXT_TOKENS = 128  # T5 sequence length of both variants (padding and truncation)

@dataclass
class TextEmbeddings:
    """T5 token embeddings with their padding mask, and the pooled CLIP vector.

    ``prompt_embeds`` [B, 128, D], ``attention_mask`` [B, 128] int64 (1 = real token, EOS included),
    ``pooled`` [B, P].
    """

    prompt_embeds: torch.Tensor
    attention_mask: torch.Tensor
    pooled: torch.Tensor

    def tensors(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.prompt_embeds, self.attention_mask, self.pooled

    @classmethod
    def cat(cls, items: Sequence["TextEmbeddings"]) -> "TextEmbeddings":
        """Concatenate on the batch axis; classifier-free guidance uses the order [negative, positive]."""
        return cls(
            prompt_embeds=torch.cat([item.prompt_embeds for item in items]),
            attention_mask=torch.cat([item.attention_mask for item in items]),
            pooled=torch.cat([item.pooled for item in items]),
        )

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "TextEmbeddings":
        """Move everything to ``device``; ``dtype`` applies to the embeddings, the mask stays int64."""
        return TextEmbeddings(
            prompt_embeds=self.prompt_embeds.to(device=device, dtype=dtype),
            attention_mask=self.attention_mask.to(device=device),
            pooled=self.pooled.to(device=device, dtype=dtype),
        )

    def validate(
        self,
        variant: Optional[str] = None,
        text_dim: Optional[int] = None,
        pooled_dim: Optional[int] = None,
    ) -> "TextEmbeddings":
        """Check the shapes against the DiT's ``joint_attention_dim`` / ``pooled_projection_dim``; returns self.

        Raises ``ValueError`` naming the tensor, the shape found and the shape expected.
        """
        for name in ("prompt_embeds", "attention_mask", "pooled"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"TextEmbeddings.{name} must be a torch.Tensor, got {type(value).__name__}.")
        batch = self.prompt_embeds.shape[0]
        if self.prompt_embeds.ndim != 3 or self.prompt_embeds.shape[1] != TEXT_TOKENS:
            raise ValueError(
                f"prompt_embeds must be [B, {TEXT_TOKENS}, D] (T5 padded/truncated to {TEXT_TOKENS} tokens), "
                f"got {list(self.prompt_embeds.shape)}."
            )
        if tuple(self.attention_mask.shape) != (batch, TEXT_TOKENS):
            raise ValueError(f"attention_mask must be [{batch}, {TEXT_TOKENS}], got {list(self.attention_mask.shape)}.")
        if self.attention_mask.dtype != torch.int64:
            raise ValueError(f"attention_mask must be int64 (0/1), got {self.attention_mask.dtype}: pass mask.long().")
        if self.pooled.ndim != 2 or self.pooled.shape[0] != batch:
            raise ValueError(f"pooled must be [{batch}, P], got {list(self.pooled.shape)}.")
        if text_dim is not None and self.prompt_embeds.shape[2] != text_dim:
            raise ValueError(
                f"prompt_embeds have {self.prompt_embeds.shape[2]} channels, the model expects {text_dim} "
                "(the T5 encoder's d_model)."
            )
        if pooled_dim is not None and self.pooled.shape[1] != pooled_dim:
            content = f" It should be {get_variant(variant).pooled_content}." if variant is not None else ""
            raise ValueError(f"pooled has {self.pooled.shape[1]} channels, the model expects {pooled_dim}.{content}")
        return self
