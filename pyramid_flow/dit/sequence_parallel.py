"""Ulysses sequence parallel for the DiT: the image tokens of one call spread over S ranks.

Each rank holds the text tokens whole (they are few: at most 128) and 1/S of the image tokens, and runs every
token-wise layer (projections, norms, MLPs) on those alone. Around attention, an all-to-all turns the split by
tokens into a split by heads: each rank then attends over the whole [text; image] sequence for H/S heads, with the
same frame-causal mask as one process, and a second all-to-all turns the image output back into the split by
tokens. The text queries, keys and values of a rank are its own heads of the whole text; their attention output is
all-gathered across the heads, so every rank keeps the whole text stream (the official ``SequenceParallelVarlen``
layout). Image tokens are padded to a multiple of S at the end of the sequence; the padding is dropped before
attention and after the output head, so it changes nothing.

Shapes: B batch, H heads, d head dim, Lt text tokens, N image tokens (Np padded), n = Np / S tokens per rank.
"""

from typing import List, Optional

import torch
import torch.distributed as dist

from .sequence import JointMask, masked_attention


def valid_splits(heads: int) -> List[int]:
    """Every sequence-parallel size above 1 that divides ``heads`` (the heads are shared out over the ranks)."""
    return [s for s in range(2, heads + 1) if heads % s == 0]


def check_split(size: int, heads: int) -> None:
    """Refuses a split that does not divide the DiT's heads, with the sizes that do."""
    if size > 1 and heads % size:
        raise ValueError(f"--sequence-parallel {size} does not divide the DiT's {heads} attention heads: use one of "
                         f"{valid_splits(heads)}.")


class SequenceSplit:
    """This rank's share of the image tokens, and the exchanges of a Ulysses split over ``group`` (S ranks)."""

    def __init__(self, rank: int, size: int, group: Optional[object] = None):
        self.rank, self.size, self.group = rank, size, group

    def local_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, *] -> this rank's [B, n, *]: N padded with zeros to a multiple of S, then the rank's piece."""
        n = -(-x.shape[1] // self.size)
        return padded(x, 1, n * self.size)[:, self.rank * n : (self.rank + 1) * n]

    def all_tokens(self, x: torch.Tensor, total: int) -> torch.Tensor:
        """This rank's [B, n, *] -> every rank's tokens [B, total, *], the padding dropped."""
        pieces = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(pieces, x.contiguous(), group=self.group)
        return torch.cat(pieces, dim=1)[:, :total]

    def heads_to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, n, d] (all heads, this rank's tokens) -> [B, H/S, Np, d] (this rank's heads, all tokens)."""
        batch, heads, n, d = x.shape
        send = x.reshape(batch, self.size, heads // self.size, n, d).transpose(0, 1).contiguous()  # [S, B, H/S, n, d]
        received = torch.empty_like(send)  # [S (source rank: its tokens), B, H/S, n, d]
        dist.all_to_all_single(received, send, group=self.group)
        return received.permute(1, 2, 0, 3, 4).reshape(batch, heads // self.size, self.size * n, d)

    def tokens_to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H/S, Np, d] -> [B, H, n, d]: the inverse of :meth:`heads_to_tokens`."""
        batch, part, padded, d = x.shape
        n = padded // self.size
        send = x.reshape(batch, part, self.size, n, d).permute(2, 0, 1, 3, 4).contiguous()  # [S, B, H/S, n, d]
        received = torch.empty_like(send)  # [S (source rank: its heads), B, H/S, n, d]
        dist.all_to_all_single(received, send, group=self.group)
        return received.transpose(0, 1).reshape(batch, part * self.size, n, d)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: JointMask) -> torch.Tensor:
        """q, k, v [B, H, Lt+n, d] (the whole text, this rank's image tokens; RoPE applied) -> [B, Lt+n, H*d].

        ``mask`` describes the whole sequence [text; N image tokens]."""
        lt, heads = mask.text_tokens, q.shape[1]
        check_split(self.size, heads)
        image_tokens = mask.key_mask.shape[-1] - lt
        part = heads // self.size
        mine = slice(self.rank * part, (self.rank + 1) * part)

        def whole_sequence(x: torch.Tensor) -> torch.Tensor:  # -> [B, H/S, Lt+N, d]
            image = self.heads_to_tokens(x[:, :, lt:])[:, :, :image_tokens]
            return torch.cat([x[:, mine, :lt], image], dim=2)

        out = masked_attention(whole_sequence(q), whole_sequence(k), whole_sequence(v), mask)  # [B, H/S, Lt+N, d]
        text = [torch.empty_like(out[:, :, :lt]) for _ in range(self.size)]
        dist.all_gather(text, out[:, :, :lt].contiguous(), group=self.group)
        image = padded(out[:, :, lt:], 2, self.size * (q.shape[2] - lt))  # [B, H/S, Np, d]
        joint = torch.cat([torch.cat(text, dim=1), self.tokens_to_heads(image)], dim=2)  # [B, H, Lt+n, d]
        return joint.transpose(1, 2).flatten(2)


def padded(x: torch.Tensor, dim: int, length: int) -> torch.Tensor:
    """``x`` with zeros appended along ``dim`` up to ``length``."""
    missing = length - x.shape[dim]
    if not missing:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x, x.new_zeros(shape)], dim=dim)
