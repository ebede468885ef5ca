"""Checkpoints written by the official training scripts load, and generate what the same weights generate from the
official folder: an accelerate ``checkpoint-N/`` folder (FSDP wrapper names, ``pytorch_model_ema.bin``), the flat
``dit.`` dict beside the VAE and text encoders, and ``train_video_vae.py``'s ``{"model": {"vae.…"}}``."""

import argparse
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from pyramid_flow import cli
from pyramid_flow.dit import load_dit
from pyramid_flow.loading.state_dict import CheckpointError, load_state_dict, read_json
from pyramid_flow.testing.tiny import build_tiny_checkpoint
from pyramid_flow.vae import load_vae
from pyramid_flow.video_io import load_latents
from tolerance import assert_within_ulps

DIT_FOLDER = "diffusion_transformer_384p"


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return build_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny")), "miniflux")


def dit_weights(root: str) -> dict:
    return load_state_dict(os.path.join(root, DIT_FOLDER))


def vae_weights(root: str) -> dict:
    return load_state_dict(os.path.join(root, "causal_video_vae"))


def fsdp_wrapped(state_dict: dict) -> dict:
    """Keys as FSDP with activation checkpointing names them: every block wrapped twice, the root once."""
    wrapped = {}
    for key, tensor in state_dict.items():
        parts = key.split(".")
        if len(parts) > 2 and parts[1].isdigit():
            parts.insert(2, "_fsdp_wrapped_module._checkpoint_wrapped_module")
        wrapped["_fsdp_wrapped_module." + ".".join(parts)] = tensor
    return wrapped


def ema_of(state_dict: dict) -> dict:
    """Other weights of the same shapes, standing in for the EMA average."""
    return {key: tensor * 0.5 if tensor.is_floating_point() else tensor for key, tensor in state_dict.items()}


def write_accelerate_folder(folder, state_dict: dict, ema: dict = None, safetensors: bool = True) -> str:
    os.makedirs(folder, exist_ok=True)
    if safetensors:
        save_file(state_dict, os.path.join(folder, "model.safetensors"))
    else:
        torch.save(state_dict, os.path.join(folder, "pytorch_model.bin"))
    if ema is not None:
        torch.save(ema, os.path.join(folder, "pytorch_model_ema.bin"))
    torch.save({"state": {}, "param_groups": []}, os.path.join(folder, "optimizer.bin"))
    return str(folder)


def write_flat_dict(path, root: str) -> str:
    """What the official load_checkpoint reads: the DiT under 'dit.', the VAE and text encoders beside it."""
    flat = {"dit." + key: tensor for key, tensor in dit_weights(root).items()}
    flat.update({"vae." + key: tensor for key, tensor in list(vae_weights(root).items())[:3]})
    flat["text_encoder.text_model.embeddings.token_embedding.weight"] = torch.zeros(4, 2)
    torch.save(flat, path)
    return str(path)


def write_vae_training_checkpoint(path, root: str, vae: dict = None) -> str:
    model = {"vae." + key: tensor for key, tensor in (vae or vae_weights(root)).items()}
    model["loss.discriminator.main.0.weight"] = torch.zeros(2, 3, 4, 4)
    model["loss.logvar"] = torch.zeros(())
    torch.save({"model": model, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95)}]},
                "epoch": 3, "args": argparse.Namespace(lr=1e-4, model_path="x")}, path)
    return str(path)


def assert_same_weights(loaded: torch.nn.Module, expected: dict) -> None:
    state = loaded.state_dict()
    for key, tensor in expected.items():
        assert torch.equal(state[key].float(), tensor.float()), key


@pytest.mark.parametrize("safetensors", [True, False], ids=["model.safetensors", "pytorch_model.bin"])
def test_an_fsdp_accelerate_folder_loads_the_same_weights(tmp_path, tiny_root, safetensors):
    original = dit_weights(tiny_root)
    folder = write_accelerate_folder(tmp_path / "checkpoint-500", fsdp_wrapped(original), safetensors=safetensors)
    dit, info = load_dit(folder)
    assert info.variant == "miniflux"
    assert_same_weights(dit, original)


def test_ema_weights_load_only_when_asked(tmp_path, tiny_root):
    original = dit_weights(tiny_root)
    folder = write_accelerate_folder(tmp_path / "checkpoint-500", original, ema=fsdp_wrapped(ema_of(original)))
    assert_same_weights(load_dit(folder)[0], original)
    assert_same_weights(load_dit(folder, ema=True)[0], ema_of(original))


def test_ema_asked_of_a_folder_without_it_names_what_is_there(tmp_path, tiny_root):
    folder = write_accelerate_folder(tmp_path / "checkpoint-500", dit_weights(tiny_root))
    with pytest.raises(CheckpointError, match=r"no pytorch_model_ema\.bin \(found: model\.safetensors, optimizer\.bin\)"):
        load_dit(folder, ema=True)


def test_the_flat_dit_dict_skips_the_vae_and_text_encoder_keys(tmp_path, tiny_root):
    dit, _ = load_dit(write_flat_dict(tmp_path / "pyramid_flow.pth", tiny_root))
    assert_same_weights(dit, dit_weights(tiny_root))


def test_a_vae_training_checkpoint_skips_loss_optimizer_and_args(tmp_path, tiny_root):
    config = read_json(os.path.join(tiny_root, "causal_video_vae", "config.json"))  # the model folder's, as --vae uses
    vae = load_vae(write_vae_training_checkpoint(tmp_path / "vae_checkpoint.pth", tiny_root), config=config)
    assert_same_weights(vae, vae_weights(tiny_root))


def test_keys_of_an_unknown_component_beside_the_dit_are_refused(tmp_path, tiny_root):
    mixed = {"dit." + key: tensor for key, tensor in dit_weights(tiny_root).items()}
    mixed["discriminator.conv.weight"] = torch.zeros(1)
    path = tmp_path / "mixed.safetensors"
    save_file(mixed, str(path))
    with pytest.raises(CheckpointError, match=r"under 'dit\.' beside 1 keys of something else \(e\.g\. "
                                              r"'discriminator\.conv\.weight'\).*'vae\.', 'text_encoder'"):
        load_dit(str(path))


def test_a_training_dict_without_weights_names_its_keys(tmp_path):
    path = tmp_path / "optimizer_only.bin"
    torch.save({"optimizer": {"state": {}}, "epoch": 1}, path)
    with pytest.raises(CheckpointError, match=r"holds a dict with keys \['epoch', 'optimizer'\], not a dict of tensors"):
        load_vae(str(path))


def _cli_latent(tmp_path, name: str, root: str, *extra: str):
    latent = tmp_path / f"{name}.safetensors"
    cli.run(["a red panda", "--model", root, "--width", "128", "--height", "64", "--temp", "2", "--steps", "1",
              "--video-steps", "1", "--save-latent", str(latent), "--output", str(tmp_path / f"{name}.mp4"), *extra])
    return load_latents(str(latent))[0]


def test_the_cli_generates_with_training_checkpoints_what_their_weights_generate(tmp_path, tiny_root):
    """--dit with --ema and --vae replace the model folder's components: the run equals one from an official folder
    holding the same weights (the same weights through other load paths: within a few ulps)."""
    original = dit_weights(tiny_root)
    ema = ema_of(original)
    folder = write_accelerate_folder(tmp_path / "checkpoint-500", fsdp_wrapped(original), ema=fsdp_wrapped(ema))
    vae = ema_of(vae_weights(tiny_root))
    vae_file = write_vae_training_checkpoint(tmp_path / "vae.pth", tiny_root, vae)

    reference = tmp_path / "reference"
    shutil.copytree(tiny_root, reference)
    save_file(ema, str(reference / DIT_FOLDER / "diffusion_pytorch_model.safetensors"))
    save_file(vae, str(reference / "causal_video_vae" / "diffusion_pytorch_model.safetensors"))

    expected = _cli_latent(tmp_path, "reference", str(reference))
    got = _cli_latent(tmp_path, "fine_tune", tiny_root, "--dit", folder, "--ema", "--vae", vae_file)
    assert_within_ulps(got, expected, name="fine-tune vs the same weights in the official folder")
    assert not torch.equal(got, _cli_latent(tmp_path, "original", tiny_root))  # the fine-tune changed something
