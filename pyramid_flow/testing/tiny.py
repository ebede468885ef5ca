"""A tiny random-weight checkpoint in the official folder layout, built on the fly.

It lets a machine without the real weights (no network, CI) run the whole path: tokenizers, text encoders, DiT,
VAE, sampler, decode, video file. Its output is noise. Weights come from a seeded generator, so two builds are
identical.
"""

import hashlib
import json
import os
import shutil
from typing import Dict, Iterator, Tuple

import torch
from safetensors.torch import save_file

from ..dit import DIT_CLASSES
from ..variants import get_variant
from ..vae import CausalVideoVAE

# Head counts that sequence parallel can share out: miniFLUX 6 (S = 2, 3, 6; its head is 64 wide, fixed by the RoPE
# axes, so 12 heads would make the tiny model 768 wide and its CPU video 2.5x slower), SD3 12 (S = 2, 3, 4, 6, 12).
TINY_DIT = {
    "miniflux": {
        "_class_name": "PyramidFluxTransformer", "attention_head_dim": 64, "axes_dims_rope": [16, 24, 24],
        "in_channels": 64, "interp_condition_pos": True, "joint_attention_dim": 32, "num_attention_heads": 6,
        "num_layers": 1, "num_single_layers": 1, "patch_size": 1, "pooled_projection_dim": 32,
        "use_flash_attn": False, "use_gradient_checkpointing": False, "use_temporal_causal": True,
    },
    "sd3": {
        "_class_name": "PyramidDiffusionMMDiT", "attention_head_dim": 16, "caption_projection_dim": 192,
        "in_channels": 16, "joint_attention_dim": 32, "max_num_frames": 200, "num_attention_heads": 12,
        "num_layers": 2, "patch_size": 2, "pooled_projection_dim": 80, "pos_embed_max_size": 192,
        "pos_embed_type": "sincos", "qk_norm": "rms_norm", "sample_size": 128, "use_flash_attn": False,
        "use_gradient_checkpointing": False, "use_temporal_causal": True,
    },
}
TINY_VAE_CHANNELS = [4, 8, 8, 8]  # small enough that long test videos decode in seconds
CLIP_SIZES = {"text_encoder": 32, "text_encoder_2": 48}  # CLIP-L, CLIP-G hidden = projection sizes
T5_SIZE = 32
COMPLETE_MARKER = ".tiny_complete"


def tiny_vae_config() -> dict:
    flags = [True, True, True, False]
    return {
        "_class_name": "CausalVideoVAE", "add_post_quant_conv": True, "downsample_scale": 8, "interpolate": False,
        "sample_size": 256, "scaling_factor": 0.13025,
        "encoder_in_channels": 3, "encoder_out_channels": 16, "encoder_double_z": True,
        "encoder_layers_per_block": [1, 1, 1, 1], "encoder_block_out_channels": TINY_VAE_CHANNELS,
        "encoder_down_block_types": ["DownEncoderBlockCausal3D"] * 4, "encoder_spatial_down_sample": flags,
        "encoder_temporal_down_sample": flags, "encoder_norm_num_groups": 4, "encoder_act_fn": "silu",
        "encoder_block_dropout": [0.0] * 4, "encoder_type": "causal_vae_conv",
        "decoder_in_channels": 16, "decoder_out_channels": 3, "decoder_layers_per_block": [1, 1, 1, 1],
        "decoder_block_out_channels": TINY_VAE_CHANNELS, "decoder_up_block_types": ["UpDecoderBlockCausal3D"] * 4,
        "decoder_spatial_up_sample": flags, "decoder_temporal_up_sample": flags, "decoder_norm_num_groups": 4,
        "decoder_act_fn": "silu", "decoder_block_dropout": [0.0] * 4, "decoder_type": "causal_vae_conv",
    }


def random_tensors(module: torch.nn.Module, generator: torch.Generator) -> Iterator[Tuple[str, torch.Tensor]]:
    """Random values for every tensor of a (meta) module's state dict, one at a time, float32 on the generator's
    device: N(0, 1/sqrt(fan_in)) matrices, 1 + N(0, 0.05) weight vectors, N(0, 0.02) biases."""
    device = generator.device
    for name, tensor in module.state_dict().items():
        if tensor.dim() >= 2:
            fan_in = tensor[0].numel()
            value = torch.randn(tensor.shape, generator=generator, device=device) / fan_in**0.5
        elif name.endswith("weight"):
            value = 1 + 0.05 * torch.randn(tensor.shape, generator=generator, device=device)
        else:
            value = 0.02 * torch.randn(tensor.shape, generator=generator, device=device)
        yield name, value.contiguous()



def random_state_dict(module: torch.nn.Module, generator: torch.Generator) -> Dict[str, torch.Tensor]:
    """:func:`random_tensors` of a (meta) module, with the tensors the model computes (SD3's position table)
    computed instead of drawn."""
    computed = module.computed_tensors([]) if hasattr(module, "computed_tensors") else {}
    return {name: computed[name].to(value) if name in computed else value
            for name, value in random_tensors(module, generator)}


def write_component(folder: str, config: dict, module: torch.nn.Module, generator: torch.Generator,
                    weights: str = "diffusion_pytorch_model.safetensors") -> None:
    """An official component folder (config.json + random weights of ``module``), written under a temporary name
    and renamed, so an interrupted write leaves no folder that looks complete."""
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    save_file(random_state_dict(module, generator), os.path.join(tmp, weights), metadata={"format": "pt"})
    shutil.rmtree(folder, ignore_errors=True)
    os.rename(tmp, folder)


def _byte_symbols():
    """The 256 printable symbols byte-level BPE tokenizers use for raw bytes."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _write_clip_tokenizer(folder: str, pad_token: str) -> None:
    """A character-level CLIP BPE tokenizer (no merges) with the real special-token layout."""
    os.makedirs(folder, exist_ok=True)
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({token: i for i, token in enumerate(tokens)}, f)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
              "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": pad_token}
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)


def _write_t5_tokenizer(folder: str) -> int:
    """A character-level unigram T5 tokenizer; returns its vocabulary size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, decoders

    os.makedirs(folder, exist_ok=True)
    chars = [chr(c) for c in range(32, 127)] + ["\u2581"]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -5.0) for c in chars]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer.save(os.path.join(folder, "tokenizer.json"))
    config = {"tokenizer_class": "T5TokenizerFast", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
              "extra_ids": 0, "model_max_length": 512}
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    return len(vocab)


def _write_text_encoders(root: str, variant: str, generator: torch.Generator) -> None:
    from transformers import CLIPTextConfig, T5Config

    text_folders = get_variant(variant).text_encoder_folders
    tokenizer_folders = get_variant(variant).tokenizer_folders
    for encoder, tokenizer in zip(text_folders[:-1], tokenizer_folders[:-1]):
        hidden = CLIP_SIZES[encoder]
        config = CLIPTextConfig(vocab_size=514, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                                num_attention_heads=2, max_position_embeddings=77, projection_dim=hidden,
                                hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2, pad_token_id=1)
        config.architectures = ["CLIPTextModelWithProjection" if get_variant(variant).clip_projected else "CLIPTextModel"]
        _write_transformers_model(os.path.join(root, encoder), config, generator)
        _write_clip_tokenizer(os.path.join(root, tokenizer), pad_token="!" if encoder == "text_encoder_2" else "<|endoftext|>")
    vocab_size = _write_t5_tokenizer(os.path.join(root, tokenizer_folders[-1]))
    config = T5Config(vocab_size=vocab_size, d_model=T5_SIZE, d_kv=8, d_ff=2 * T5_SIZE, num_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu", relative_attention_num_buckets=8, relative_attention_max_distance=16)
    config.architectures = ["T5EncoderModel"]
    _write_transformers_model(os.path.join(root, text_folders[-1]), config, generator)


def _write_transformers_model(folder: str, config, generator: torch.Generator) -> None:
    import transformers

    model_class = getattr(transformers, config.architectures[0])
    with torch.device("meta"):
        model = model_class(config)
    os.makedirs(folder, exist_ok=True)
    config.save_pretrained(folder)
    state_dict = dict(random_tensors(model, generator))
    if "shared.weight" in state_dict:  # T5 ties its input embedding to the shared one
        state_dict["encoder.embed_tokens.weight"] = state_dict["shared.weight"].clone()
    save_file(state_dict, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


def _fingerprint(variant: str, seed: int) -> str:
    """What the checkpoint is made from: a folder written from other configs is rebuilt."""
    settings = [TINY_DIT[variant], tiny_vae_config(), CLIP_SIZES, T5_SIZE, seed]
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def build_tiny_checkpoint(root: str, variant: str = "miniflux", dit_folder: str = "diffusion_transformer_384p", seed: int = 0) -> str:
    """Write (once) a tiny random-weight checkpoint of ``variant`` under ``root``; returns ``root``."""
    variant = get_variant(variant).name
    marker = os.path.join(root, dit_folder, COMPLETE_MARKER)
    fingerprint = _fingerprint(variant, seed)
    if os.path.isfile(marker) and open(marker, encoding="utf-8").read() == fingerprint:
        return root

    generator = torch.Generator().manual_seed(seed)
    dit_config, dit_class = TINY_DIT[variant], DIT_CLASSES[variant]
    with torch.device("meta"):
        dit = dit_class(**dit_config)
        vae = CausalVideoVAE(**tiny_vae_config())
    write_component(os.path.join(root, dit_folder), dit_config, dit, generator)
    write_component(os.path.join(root, "causal_video_vae"), tiny_vae_config(), vae, generator)
    _write_text_encoders(root, variant, generator)
    with open(marker, "w", encoding="utf-8") as f:
        f.write(fingerprint)
    return root


def with_random_weights(model: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """A model built on ``meta`` filled with :func:`random_state_dict` on the generator's device, each tensor in the
    dtype the model built it with, in eval mode."""
    storage = {name: tensor.dtype for name, tensor in model.state_dict().items()}
    state_dict = {name: value.to(storage[name]) for name, value in random_state_dict(model, generator).items()}
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval().requires_grad_(False)
