"""The prompt texts the official pipeline encodes: a quality suffix on positive prompts, a default negative."""

from typing import List, Optional, Sequence, Tuple, Union

PROMPT_SUFFIX = ", hyper quality, Ultra HD, 8K"
DEFAULT_NEGATIVE_PROMPT = (
    "cartoon style, worst quality, low quality, blurry, absolute black, absolute white, low res, extra limbs, "
    "extra digits, misplaced objects, mutated anatomy, monochrome, horror"
)


def effective_prompts(
    prompt: Union[str, Sequence[str]], negative_prompt: Optional[str] = DEFAULT_NEGATIVE_PROMPT, add_suffix: bool = True
) -> Tuple[List[str], List[str]]:
    """The texts actually encoded: the suffix goes on positive prompts only; a None negative prompt is ''."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if add_suffix:
        prompts = [p + PROMPT_SUFFIX for p in prompts]
    return prompts, [negative_prompt or ""] * len(prompts)
