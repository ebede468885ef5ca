"""Text conditioning: the official encoders, the embeddings the DiT consumes, prompt texts and schedules."""

from .embeddings import TEXT_TOKENS, TextEmbeddings
from .encoders import PyramidTextEncoder
from .prompts import DEFAULT_NEGATIVE_PROMPT, PROMPT_SUFFIX, effective_prompts
from .schedule import PromptSchedule, parse_prompt_schedule, schedule_units

__all__ = ["DEFAULT_NEGATIVE_PROMPT", "PROMPT_SUFFIX", "TEXT_TOKENS", "PromptSchedule", "PyramidTextEncoder",
           "TextEmbeddings", "effective_prompts", "parse_prompt_schedule", "schedule_units"]
