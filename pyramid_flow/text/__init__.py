"""Text conditioning: the official encoders and the embeddings the DiT consumes."""

from .embeddings import TEXT_TOKENS, TextEmbeddings
from .encoders import PyramidTextEncoder

__all__ = ["TEXT_TOKENS", "PyramidTextEncoder", "TextEmbeddings"]
