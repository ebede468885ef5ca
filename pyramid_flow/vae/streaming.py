"""Running the causal VAE over a video in temporal chunks: the official chunking, one causal cache per stream,
progress after every piece, and gathering the pieces into one tensor.

A *piece* is one temporal chunk of one spatial tile (or of the whole frame without tiling).
"""

from typing import Callable, Iterator, List, Optional

import torch

from .layers import LAYOUT, CausalCache

Progress = Optional[Callable[[int, int], None]]  # callback(done, total); may raise to interrupt
Run = Callable[[torch.Tensor, Optional[CausalCache]], torch.Tensor]  # run(piece, cache) -> output piece


def temporal_chunks(frames: int, window_size: int) -> List[slice]:
    """The official chunking (``CausalVideoVAE.chunk_decode`` / ``chunk_encode``): a first chunk of window_size + 1
    frames, then window_size each
    (the last one shorter)."""
    bounds = [0, *range(window_size + 1, frames, window_size), frames]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def stream(run: Run, x: torch.Tensor, window_size: Optional[int],
           cache_device: Optional[torch.device] = None) -> Iterator[torch.Tensor]:
    """run(piece, cache) over the temporal chunks of x [B, C, T, H, W] (``window_size`` input frames after a first
    chunk of window_size + 1) with one causal cache, or once on all of x when ``window_size`` is None.
    ``cache_device``: where the cache waits between chunks (moved back to x's device for each chunk)."""
    if window_size is None:
        yield run(x, None)
        return
    cache = CausalCache()
    for frames in temporal_chunks(x.shape[2], window_size):
        piece = run(x[:, :, frames], cache.to(x.device) if cache_device is not None else cache)
        cache.first_chunk = False
        if cache_device is not None:
            cache.to(cache_device)
        yield piece


class ProgressCounter:
    """Counts finished pieces over a whole encode or decode and reports them to ``callback``."""

    def __init__(self, callback: Progress, total: int):
        self.callback, self.total, self.done = callback, total, 0

    def track(self, pieces: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        for piece in pieces:
            self.done += 1
            if self.callback is not None:
                self.callback(self.done, self.total)
            yield piece


def cat_frames(pieces: Iterator[torch.Tensor]) -> torch.Tensor:
    """The pieces [B, C, n, H, W] of one stream, concatenated in time."""
    pieces = list(pieces)
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)


def gather_frames(pieces: Iterator[torch.Tensor], frames: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """Write the pieces [B, C, n, H, W] one after the other into one [B, C, frames, H, W] tensor, allocated once
    on ``device`` (default: the pieces'; a list plus torch.cat would hold every frame twice)."""
    out, start = None, 0
    for piece in pieces:
        if out is None:
            if piece.shape[2] == frames and device is None:
                return piece
            out = torch.empty((*piece.shape[:2], frames, *piece.shape[3:]), dtype=piece.dtype,
                              device=device or piece.device, memory_format=LAYOUT)
        out[:, :, start : start + piece.shape[2]] = piece
        start += piece.shape[2]
    return out
