"""The Pyramid Flow causal video VAE (reference §3): ``CausalVideoVAE`` and its loader."""

from .layers import CausalCache
from .loading import load_vae
from .model import CausalVideoVAE, posterior_sample, temporal_chunks

__all__ = ["CausalCache", "CausalVideoVAE", "load_vae", "posterior_sample", "temporal_chunks"]
