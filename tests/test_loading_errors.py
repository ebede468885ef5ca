"""Broken or wrong model files give the pack's own message, naming the file and the fix, before any heavy work."""

import os
import shutil

import pytest
import torch

from golden import checkpoint_root, manifest, variant_info
from pyramid_flow.dit import load_dit
from pyramid_flow.loading.state_dict import CheckpointError, load_state_dict
from pyramid_flow.text import PyramidTextEncoder
from pyramid_flow.vae import load_vae


class Payload:
    """A pickled object that would run code when unpickled without weights_only."""

    def __reduce__(self):
        return (print, ("this ran while loading",))


def _copy(tmp_path, variant: str, folder: str) -> str:
    manifest()
    target = tmp_path / folder
    shutil.copytree(os.path.join(checkpoint_root(variant), folder), target)
    return str(target)


def test_pickled_text_encoder_weights_get_the_packs_message(tmp_path):
    manifest()
    root = tmp_path / "miniflux"
    for folder in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
        shutil.copytree(os.path.join(checkpoint_root("miniflux"), folder), root / folder)
    os.remove(root / "text_encoder" / "model.safetensors")
    torch.save({"text_model.embeddings.token_embedding.weight": Payload()}, root / "text_encoder" / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as err:
        PyramidTextEncoder.from_pretrained(str(root), "miniflux")
    message = str(err.value)
    assert os.path.join("text_encoder", "pytorch_model.bin") in message and "Only safe formats load" in message
    assert "weights_only=False" not in message


@pytest.mark.parametrize("component", ["dit", "vae", "text"])
def test_garbage_config_json_names_the_file(tmp_path, component):
    variant = "miniflux"
    folder = {"dit": variant_info(variant)["dit_folder"] if component == "dit" else None, "vae": "causal_video_vae",
              "text": "text_encoder_2"}[component]
    if component == "text":
        manifest()
        for sub in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
            shutil.copytree(os.path.join(checkpoint_root(variant), sub), tmp_path / sub)
        path = str(tmp_path / folder)
    else:
        path = _copy(tmp_path, variant, folder)
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        f.write("{ this is not json")
    load = {"dit": lambda: load_dit(path), "vae": lambda: load_vae(path),
            "text": lambda: PyramidTextEncoder.from_pretrained(str(tmp_path), variant)}[component]
    with pytest.raises(CheckpointError, match=f"'{os.path.join(path, 'config.json')}' is not valid JSON.*Download it again"):
        load()


def test_pickle_files_of_other_kinds_are_refused_by_extension(tmp_path):
    path = tmp_path / "model.pkl"
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="not a weight format that loads here"):
        load_state_dict(str(path))


def test_the_error_type_has_a_short_stable_name():
    """ComfyUI shows module + class name; not the path the pack happens to be installed under."""
    assert f"{CheckpointError.__module__}.{CheckpointError.__qualname__}" == "pyramid_flow.CheckpointError"


@pytest.mark.parametrize("folder", ["dit", "causal_video_vae"])
def test_unknown_config_keys_are_reported_by_name(tmp_path, folder):
    """A config.json key the model neither takes nor knows to be inert is named in a warning, never dropped
    silently; the official keys load without one."""
    import json
    import warnings

    variant = "miniflux"
    name = variant_info(variant)["dit_folder"] if folder == "dit" else folder
    path = _copy(tmp_path, variant, name)
    load = load_dit if folder == "dit" else load_vae
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load(path)
    config_path = os.path.join(path, "config.json")
    os.chmod(config_path, 0o644)  # copied from a read-only golden set
    with open(config_path) as f:
        config = json.load(f)
    with open(config_path, "w") as f:
        json.dump({**config, "use_magic": True, "num_frames_extra": 3}, f)
    with pytest.warns(UserWarning, match=r"\['num_frames_extra', 'use_magic'\] are unknown"):
        load(path)
