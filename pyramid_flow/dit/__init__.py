"""The Pyramid Flow diffusion transformers (SD3 MMDiT and miniFLUX) and their loader."""

from .base import PyramidDiT
from .flux import PyramidFluxDiT
from .loading import DiTInfo, load_dit
from .mmdit import PyramidMMDiT

__all__ = ["PyramidDiT", "PyramidFluxDiT", "PyramidMMDiT", "DiTInfo", "load_dit"]
