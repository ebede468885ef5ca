"""The Pyramid Flow diffusion transformers, registered by variant name (SD3 MMDiT, miniFLUX), and their loader."""

from .base import DIT_CLASSES, PyramidDiT, register_dit
from .flux import PyramidFluxDiT
from .loading import DiTInfo, load_dit
from .mmdit import PyramidMMDiT

__all__ = ["DIT_CLASSES", "PyramidDiT", "PyramidFluxDiT", "PyramidMMDiT", "DiTInfo", "load_dit", "register_dit"]
