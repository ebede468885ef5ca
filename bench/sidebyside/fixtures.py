"""Random weights and inputs of the cases, written once (seeded) for both sides. Runs in the project's venv.

Weights go to official Hugging Face layout folders (config.json + diffusion_pytorch_model.safetensors); the
whole-generate() cases get a complete checkpoint (tiny text encoders and tokenizers of pyramid_flow.tiny, the
tiny VAE, and the case's DiT). The key names and shapes come from building our modules on the meta device: they
are the official names (our loaders assign them strictly), and the official from_pretrained loads the same files.
"""

import json
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

from pyramid_flow.dit import DIT_CLASSES
from pyramid_flow.history import history_clips
from pyramid_flow.latents import PYRAMID_STAGES
from pyramid_flow.noise import OFFICIAL_BLOCK_FACTOR
from pyramid_flow.testing import tiny
from pyramid_flow.vae import CausalVideoVAE

from . import cases as C

SEED = 0


def write_component(folder: str, config: dict, module: torch.nn.Module, seed: int) -> None:
    tiny.write_component(folder, config, module, torch.Generator().manual_seed(seed))


def meta_dit(variant: str, config: dict):
    return DIT_CLASSES[variant](**config, device="meta")


def write_dit(folder: str, variant: str, config: dict) -> None:
    if not os.path.isfile(os.path.join(folder, "config.json")):
        write_component(folder, config, meta_dit(variant, config), SEED)


def write_vae(folder: str, vae: dict) -> None:
    if not os.path.isfile(os.path.join(folder, "config.json")):
        config = C.vae_config(vae["channels"], vae["groups"])
        write_component(folder, config, CausalVideoVAE(**config, device="meta"), SEED + 1)


def dit_inputs(case: dict) -> dict:
    """The stage-2 DiT call of unit ``case['unit']`` as PyramidSampler makes it (CFG batch 2)."""

    generator = torch.Generator().manual_seed(SEED + 2)
    config = case["config"]
    h, w = case["height"] // 8, case["width"] // 8
    frames = torch.randn(1, 16, case["unit"], h, w, generator=generator)
    clips = [torch.cat([c] * 2) for c in history_clips(frames, PYRAMID_STAGES)[-1]] if case["unit"] else []
    sample = torch.randn(1, 16, 1, h, w, generator=generator)
    clips.append(torch.cat([sample] * 2))
    mask = torch.zeros(2, 128, dtype=torch.int64)
    mask[0, :40] = 1  # negative prompt
    mask[1, :25] = 1  # prompt
    return {
        "clips": [c.contiguous() for c in clips],
        "context": torch.randn(2, 128, config["joint_attention_dim"], generator=generator),
        "mask": mask,
        "pooled": torch.randn(2, config["pooled_projection_dim"], generator=generator),
        "timestep": torch.full((2,), case["timestep"]),
    }


def vae_inputs(case: dict) -> dict:
    generator = torch.Generator().manual_seed(SEED + 3)
    return {"z": torch.randn(case["latent"], generator=generator)}


def legacy_metaspace(path: str) -> None:
    """Rewrite the T5 tokenizer.json's Metaspace entries in the pre-0.19 ``tokenizers`` form (add_prefix_space,
    no ``split``), which the official pin (tokenizers < 0.19) needs and newer versions still read."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    for part in ("pre_tokenizer", "decoder"):
        entry = data.get(part) or {}
        if entry.get("type") == "Metaspace":
            entry.pop("split", None)
            entry["add_prefix_space"] = entry.get("prepend_scheme", "always") != "never"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def prefix_clip_keys(path: str) -> None:
    """Give the CLIP weights the ``text_model.`` key prefix of the released checkpoints: transformers 5 saves
    CLIPTextModel without it, and transformers 4.39 (the official pin) would then initialise CLIP at random."""
    state_dict = load_file(path)
    if all(k.startswith("text_model.") for k in state_dict):
        return
    state_dict = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in state_dict.items()}
    save_file(state_dict, path, metadata={"format": "pt"})


def prepare(case: dict, workdir: str) -> dict:
    """Write what ``case`` needs under ``workdir`` (skipping what is there); returns the paths for the sides."""
    if case["kind"] == "dit":
        weights = os.path.join(workdir, C.dit_folder(case))
        write_dit(weights, case["variant"], case["config"])
        inputs = os.path.join(workdir, f"inputs_{case['name']}_{C.key(case)}.pt")
        if not os.path.isfile(inputs):
            torch.save(dit_inputs(case), inputs)
        return {"weights": weights, "inputs": inputs}
    if case["kind"] == "vae":
        weights = os.path.join(workdir, C.vae_folder(case["vae"]))
        write_vae(weights, case["vae"])
        inputs = os.path.join(workdir, f"inputs_{case['name']}_{C.key(case)}.pt")
        if not os.path.isfile(inputs):
            torch.save(vae_inputs(case), inputs)
        return {"weights": weights, "inputs": inputs}
    if case["kind"] == "generate":
        root = os.path.join(workdir, C.generate_root(case))
        dit_path = os.path.join(root, C.DIT_SUBFOLDER)
        if not os.path.isfile(os.path.join(dit_path, ".bench_dit")):
            tiny.build_tiny_checkpoint(root, "miniflux", dit_folder=C.DIT_SUBFOLDER, seed=SEED)  # text encoders, tiny VAE
            legacy_metaspace(os.path.join(root, "tokenizer_2", "tokenizer.json"))
            prefix_clip_keys(os.path.join(root, "text_encoder", "model.safetensors"))
            shutil.rmtree(dit_path)
            write_dit(dit_path, "miniflux", case["dit"])
            open(os.path.join(dit_path, ".bench_dit"), "w").close()
        block_factor = os.path.join(workdir, "official_block_factor.pt")
        if not os.path.isfile(block_factor):
            torch.save(OFFICIAL_BLOCK_FACTOR, block_factor)
        return {"weights": root, "block_factor": block_factor}
    raise ValueError(f"unknown case kind {case['kind']}")
