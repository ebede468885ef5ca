"""The official spatial tiling of the causal VAE: where tiles start, how they are blended and cropped (official
``CausalVideoVAE.tiled_decode`` / ``tiled_encode`` with ``blend_v`` / ``blend_h``).

Tiling is not numerically neutral (GroupNorm statistics depend on the tile), so the arithmetic is the official
one to the integer:

- encode (input in pixels): tile = ``tile_sample_min_size``, stride = int(tile * (1 - overlap)),
  blend = int(int(tile / 8) * overlap) latents, crop = int(tile / 8) - blend latents;
- decode (input in latents): tile = int(tile_sample_min_size / 8), stride = int(tile * (1 - overlap)),
  blend = int(tile_sample_min_size * overlap) pixels, crop = tile_sample_min_size - blend pixels.

Both are :func:`tile_grid` with the tile given in input and in output units.

Each output tile is blended in place with the (already blended) tile above it and the one to its left, over
``blend`` rows / columns with a linear ramp, and cropped to ``crop`` in both directions, the last tiles
included. The tiles' crops, side by side, make the output.

Shapes: every tile is [B, C, T, H, W]; blending and cropping act on each frame alone, so a temporal chunk of
every tile can be assembled on its own with the same result.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Protocol, Tuple

import torch

Span = Tuple[int, int]  # (offset, length)


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one input lie (input units) and where their crops go in the output (output units)."""

    tile: int  # tile side, input units
    blend: int  # blend ramp, output units
    rows: Tuple[int, ...]  # tile starts along H, input units
    cols: Tuple[int, ...]  # tile starts along W
    out_rows: Tuple[Span, ...]  # crop of each tile row in the output
    out_cols: Tuple[Span, ...]

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def out_size(self) -> Tuple[int, int]:
        return sum(n for _, n in self.out_rows), sum(n for _, n in self.out_cols)

    def tiles(self, x: torch.Tensor) -> Iterator[Tuple[int, int, torch.Tensor]]:
        """(row, column, view of the tile) in raster order, the order the official blends in."""
        for i, y in enumerate(self.rows):
            for j, x0 in enumerate(self.cols):
                yield i, j, x[:, :, :, y : y + self.tile, x0 : x0 + self.tile]


def _spans(size: int, tile: int, stride: int, crop: int,
           out_size: Callable[[int], int]) -> Tuple[Tuple[int, ...], Tuple[Span, ...]]:
    starts = tuple(range(0, size, stride))
    spans, offset = [], 0
    for start in starts:
        length = min(crop, out_size(min(tile, size - start)))
        spans.append((offset, length))
        offset += length
    return starts, tuple(spans)


def tile_grid(height: int, width: int, tile: int, out_tile: int, tile_overlap: float,
              out_size: Callable[[int], int]) -> Optional[TileGrid]:
    """The official tiles of an input [.., height, width], or None when it fits in one tile (no tiling).

    tile: tile side in input units; out_tile: the same tile in output units (encode: tile_sample_min_size
    pixels and int(tile_sample_min_size / 8) latents; decode: the other way round). Tiles start every
    int(tile * (1 - overlap)), blend over int(out_tile * overlap) and keep out_tile - blend. out_size maps an
    input length to its output length.
    """
    if not 0.0 <= tile_overlap < 1.0:
        raise ValueError(f"tile_overlap {tile_overlap} must be in [0, 1) (official: 0.25).")
    if height <= tile and width <= tile:
        return None  # the official tiles only when H or W exceeds the tile
    stride, blend = int(tile * (1 - tile_overlap)), int(out_tile * tile_overlap)
    crop = out_tile - blend
    if stride < 1 or crop < 1:
        raise ValueError(
            f"A tile of {tile} with overlap {tile_overlap} leaves a stride of {stride} and a crop of {crop}: nothing "
            "to tile with. Use a larger tile size (e.g. 256 pixels) or a smaller overlap."
        )
    rows, out_rows = _spans(height, tile, stride, crop, out_size)
    cols, out_cols = _spans(width, tile, stride, crop, out_size)
    return TileGrid(tile, blend, rows, cols, out_rows, out_cols)


def blend_(prev: torch.Tensor, tile: torch.Tensor, extent: int, dim: int) -> None:
    """Ramp the first ``extent`` rows (dim 3) or columns (dim 4) of ``tile`` from the last ones of ``prev``, in
    place: tile[k] = prev[k - extent] * (1 - k / extent) + tile[k] * (k / extent), the official blend_v / blend_h
    done for all rows in one pass. The weights are the official float64 ramps rounded once to float32 (what a
    Python scalar becomes in a float32 product), so float32 tiles get the official numbers; lower precisions
    blend in float32 and round once."""
    extent = min(prev.shape[dim], tile.shape[dim], extent)
    if extent == 0:
        return
    shape = [1] * tile.dim()
    shape[dim] = extent
    ramp = torch.tensor([k / extent for k in range(extent)], dtype=torch.float64)
    keep = (1 - ramp).to(torch.float32).view(shape).to(tile.device)
    take = ramp.to(torch.float32).view(shape).to(tile.device)
    head = tile.narrow(dim, 0, extent)
    compute = torch.float32 if tile.dtype.itemsize < 4 else tile.dtype
    blended = prev.narrow(dim, prev.shape[dim] - extent, extent).to(compute) * keep + head.to(compute) * take
    head.copy_(blended)


TilePieces = Dict[Tuple[int, int], torch.Tensor]  # (row, column) -> that tile's piece of one temporal chunk


class TileShare(Protocol):
    """How the tiles of one decode are shared out over processes (``pyramid_flow.parallel.TileRanks``): each
    process decodes the tiles it owns, and one process gathers every tile's piece of each chunk."""

    def owns(self, index: int) -> bool:
        """Whether this process decodes tile ``index`` (raster order)."""

    def gather(self, pieces: TilePieces) -> Optional[TilePieces]:
        """This process's pieces of one chunk -> every tile's piece on the gathering process, None elsewhere."""


class TileAssembler:
    """Blends tiles arriving in raster order and writes their crops into one output.

    Only what later tiles read is kept: the bottom ``blend`` rows of each tile of the previous row and the right
    ``blend`` columns of the previous tile (both taken after that tile's own blending, since the official blends
    in place), so each tile can be freed as soon as it is placed.
    """

    def __init__(self, grid: TileGrid, output_device: Optional[torch.device] = None):
        """``output_device``: where the output is allocated (default: the first tile's device)."""
        self.grid, self.output_device = grid, output_device
        self.output: Optional[torch.Tensor] = None  # [B, C, T, H_out, W_out], allocated from the first tile
        self._above: List[Optional[torch.Tensor]] = [None] * len(grid.cols)
        self._left: Optional[torch.Tensor] = None

    def add(self, i: int, j: int, tile: torch.Tensor) -> None:
        """Blend tile (row i, column j) [B, C, T, h, w] in place and write its crop into the output."""
        grid, extent = self.grid, self.grid.blend
        if extent:
            if i > 0:
                blend_(self._above[j], tile, extent, dim=3)
            if j > 0:
                blend_(self._left, tile, extent, dim=4)
            if i + 1 < len(grid.rows):
                self._above[j] = tile[:, :, :, -extent:].clone()
            if j + 1 < len(grid.cols):
                self._left = tile[..., -extent:].clone()
        if self.output is None:
            self.output = torch.empty((*tile.shape[:3], *grid.out_size), dtype=tile.dtype,
                                      device=self.output_device or tile.device,
                                      memory_format=torch.channels_last_3d if tile.dim() == 5 else torch.contiguous_format)
        (y, h), (x, w) = grid.out_rows[i], grid.out_cols[j]
        self.output[:, :, :, y : y + h, x : x + w] = tile[:, :, :, :h, :w]
