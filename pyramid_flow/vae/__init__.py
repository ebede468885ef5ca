"""The Pyramid Flow causal video VAE: ``CausalVideoVAE``, its loader and decode presets."""

from .layers import CausalCache
from .loading import load_vae
from .model import ENCODE_TILE, FAST_DECODE, SAVE_MEMORY_DECODE, CausalVideoVAE, DecodeSettings
from .streaming import temporal_chunks

__all__ = ["CausalCache", "CausalVideoVAE", "DecodeSettings", "ENCODE_TILE", "FAST_DECODE", "SAVE_MEMORY_DECODE",
           "load_vae", "temporal_chunks"]
