"""The official text encoders, loaded with transformers from the Hugging Face folders.

SD3 variant: CLIP-L and CLIP-G (with projection) give the pooled vector, T5 the token sequence. miniflux:
CLIP-L (no projection) and T5. CLIP sees 77 tokens and no mask; T5 sees 128 tokens and its padding mask.

The pooled CLIP vector is taken here rather than from transformers' ``pooler_output``: the official
checkpoints carry the legacy ``eos_token_id: 2``, for which transformers pools at ``argmax(input_ids)``
(the first end token, the largest id), and how that rule is implemented has changed between releases.
"""

import os
import pickle
from typing import Dict, List, Union

import torch
import transformers
from packaging.version import Version
from torch import nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from ..loading.hub import ensure_model, resolve_repo
from ..loading.state_dict import CheckpointError, find_weight_file, read_json, unsafe_pickle_error
from ..variants import Variant, get_variant
from .embeddings import TEXT_TOKENS, TextEmbeddings

CLIP_MODEL_TYPE = "clip_text_model"
T5_MODEL_TYPE = "t5"
# transformers 4.56 renamed from_pretrained's ``torch_dtype`` to ``dtype``; the old name is deprecated in 5.x.
DTYPE_KWARG = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"

Tokens = Dict[str, Dict[str, torch.Tensor]]  # tokenizer folder -> {"input_ids", "attention_mask"}


def _check_model_types(root: str, variant: Variant, repo_id: str) -> None:
    """Catch the other variant's folder before loading anything: its encoder folders hold other models."""
    *clip_folders, t5_folder = variant.text_encoder_folders
    expected = {**{folder: CLIP_MODEL_TYPE for folder in clip_folders}, t5_folder: T5_MODEL_TYPE}
    for folder, model_type in expected.items():
        config = read_json(os.path.join(root, folder, "config.json"))
        if config is not None and config.get("model_type") != model_type:
            raise CheckpointError(
                f"'{os.path.join(root, folder)}' holds a '{config.get('model_type')}' model, but the {variant.name} "
                f"variant expects '{model_type}' there: '{root}' is not a {repo_id} checkpoint. "
                "Pick the variant that matches the folder."
            )


def _load_model(model_class, folder: str, dtype: torch.dtype, device) -> nn.Module:
    try:
        model, info = model_class.from_pretrained(folder, output_loading_info=True, **{DTYPE_KWARG: dtype})
    except pickle.UnpicklingError as err:  # a .bin that is not plain tensors; transformers loads with weights_only
        raise unsafe_pickle_error(find_weight_file(folder), err) from err
    # transformers fills tied and non-persistent tensors itself; some 4.x releases still list CLIP's position_ids
    missing = sorted(key for key in info["missing_keys"] if not key.endswith("position_ids"))
    if missing:
        raise CheckpointError(
            f"'{folder}' is not a {model_class.__name__} checkpoint: {len(missing)} weights are missing "
            f"(e.g. {missing[0]}). Check that the folder belongs to the chosen variant."
        )
    return model.to(device).eval()


class PyramidTextEncoder(nn.Module):
    """Prompts to :class:`TextEmbeddings`, as the official ``text_encoder`` of each variant computes them."""

    def __init__(self, variant: str, tokenizers: Dict[str, object], clip: List[nn.Module], t5: nn.Module):
        super().__init__()
        self.variant = get_variant(variant)
        self.tokenizers = tokenizers  # folder -> tokenizer, in self.variant.tokenizer_folders order
        self.clip = nn.ModuleList(clip)
        self.t5 = t5

    @classmethod
    def from_pretrained(
        cls, root: str, variant: str, dtype: torch.dtype = torch.float32, device="cpu"
    ) -> "PyramidTextEncoder":
        """Load the tokenizers and encoders from an official folder (``rain1011/pyramid-flow-<variant>``)."""
        resolved, repo_id = resolve_repo(variant)
        _check_model_types(root, resolved, repo_id)
        ensure_model(root, resolved.name, components=("text",))
        *clip_tokenizers, t5_tokenizer = resolved.tokenizer_folders
        *clip_folders, t5_folder = resolved.text_encoder_folders
        tokenizers = {folder: CLIPTokenizer.from_pretrained(os.path.join(root, folder)) for folder in clip_tokenizers}
        tokenizers[t5_tokenizer] = T5TokenizerFast.from_pretrained(os.path.join(root, t5_tokenizer))
        clip_class = CLIPTextModelWithProjection if resolved.clip_projected else CLIPTextModel
        clip = [_load_model(clip_class, os.path.join(root, folder), dtype, device) for folder in clip_folders]
        t5 = _load_model(T5EncoderModel, os.path.join(root, t5_folder), dtype, device)
        return cls(resolved.name, tokenizers, clip, t5)

    def tokenize(self, prompts: Union[str, List[str]]) -> Tokens:
        """Token ids (and masks) of every tokenizer: CLIP padded/truncated to 77, T5 to 128 with EOS."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        tokens = {}
        for folder, tokenizer in self.tokenizers.items():
            is_t5 = folder == self.variant.tokenizer_folders[-1]
            encoded = tokenizer(
                prompts,
                padding="max_length",
                max_length=TEXT_TOKENS if is_t5 else tokenizer.model_max_length,
                truncation=True,
                add_special_tokens=True,
                return_tensors="pt",
            )
            tokens[folder] = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        return tokens

    @torch.no_grad()
    def encode_tokens(self, tokens: Tokens) -> TextEmbeddings:
        """The output of :meth:`tokenize` through the encoders."""
        *clip_tokenizers, t5_tokenizer = self.variant.tokenizer_folders
        pooled = torch.cat(
            [_clip_pooled(model, tokens[folder]["input_ids"]) for folder, model in zip(clip_tokenizers, self.clip)],
            dim=-1,
        )  # [B, P]
        device = self.t5.device
        mask = tokens[t5_tokenizer]["attention_mask"].to(device=device, dtype=torch.int64)  # [B, 128]
        t5_output = self.t5(input_ids=tokens[t5_tokenizer]["input_ids"].to(device), attention_mask=mask)
        dtype = self.t5.dtype
        return TextEmbeddings(t5_output.last_hidden_state.to(dtype), mask, pooled.to(device=device, dtype=dtype))

    def encode(self, prompts: Union[str, List[str]]) -> TextEmbeddings:
        """``prompts`` (one string or a list) -> embeddings [B, 128, D], mask [B, 128], pooled [B, P]."""
        return self.encode_tokens(self.tokenize(prompts))


def _clip_pooled(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The final-LayerNorm state at the first end token, projected when the model has a text projection."""
    input_ids = input_ids.to(model.device)
    hidden = model(input_ids=input_ids).last_hidden_state  # [B, 77, H], after the final LayerNorm
    end = input_ids.argmax(dim=-1)  # legacy eos_token_id == 2 rule: the end token has the largest id
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), end]  # [B, H]
    projection = getattr(model, "text_projection", None)
    return pooled if projection is None else projection(pooled)
