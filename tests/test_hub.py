"""Model folder checks and downloads, against a local fake of ``huggingface_hub.snapshot_download`` (no network)."""

import inspect
import json
import os
from fnmatch import fnmatch

import huggingface_hub
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

from pyramid_flow.loading.hub import download_model, ensure_model
from pyramid_flow.loading.state_dict import CheckpointError

SHARDS = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
MODEL = ["config.json", "model.safetensors"]
DIFFUSERS_MODEL = ["config.json", "diffusion_pytorch_model.safetensors"]
CLIP_TOKENIZER = ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
T5_TOKENIZER = ["special_tokens_map.json", "spiece.model", "tokenizer.json", "tokenizer_config.json"]
T5_SHARDED = ["config.json", "model.safetensors.index.json"] + SHARDS


def _layout(folders):
    return [f"{folder}/{name}" for folder, names in folders.items() for name in names]


DITS = {name: DIFFUSERS_MODEL for name in ("diffusion_transformer_384p", "diffusion_transformer_768p")}
REPOS = {
    "rain1011/pyramid-flow-sd3": _layout({
        "causal_video_vae": DIFFUSERS_MODEL, **DITS, "text_encoder": MODEL, "text_encoder_2": MODEL,
        "text_encoder_3": T5_SHARDED, "tokenizer": CLIP_TOKENIZER, "tokenizer_2": CLIP_TOKENIZER,
        "tokenizer_3": T5_TOKENIZER,
    }) + ["README.md"],
    "rain1011/pyramid-flow-miniflux": _layout({
        "causal_video_vae": ["config.json", "diffusion_pytorch_model.bin"], **DITS,
        "diffusion_transformer_image": DIFFUSERS_MODEL, "text_encoder": MODEL, "text_encoder_2": T5_SHARDED,
        "tokenizer": CLIP_TOKENIZER, "tokenizer_2": T5_TOKENIZER,
    }) + ["README.md"],
}


class FakeHub:
    """Writes the files of a fake repository that match ``allow_patterns`` into ``local_dir``."""

    def __init__(self, error=None):
        self.calls = []
        self.error = error

    def __call__(self, repo_id, *, local_dir, allow_patterns, **kwargs):
        self.calls.append({"repo_id": repo_id, "local_dir": local_dir, "allow_patterns": list(allow_patterns), **kwargs})
        if self.error is not None:
            raise self.error
        for path in REPOS[repo_id]:
            if any(fnmatch(path, pattern) for pattern in allow_patterns):
                target = os.path.join(local_dir, path)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                index = {"weight_map": {"a": SHARDS[0], "b": SHARDS[1]}}
                with open(target, "w", encoding="utf-8") as f:
                    f.write(json.dumps(index) if path.endswith(".index.json") else "x")
        return local_dir


@pytest.fixture
def fake_hub(monkeypatch):
    hub = FakeHub()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", lambda self, repo_id, **kwargs: {"id": repo_id})  # reachable
    return hub


def test_fake_matches_the_real_signature():
    inspect.signature(huggingface_hub.snapshot_download).bind("repo", local_dir="x", allow_patterns=["a/*"], tqdm_class=object)


def test_progress_class_is_handed_to_huggingface_hub(tmp_path, fake_hub):
    class Progress:  # stands for a tqdm subclass that drives a UI progress bar
        pass

    download_model("miniflux", str(tmp_path), components=("vae",), tqdm_class=Progress)
    assert fake_hub.calls[0]["tqdm_class"] is Progress
    assert fake_hub.calls[0]["allow_patterns"] == ["causal_video_vae/*"]


def test_download_fetches_only_the_needed_folders(tmp_path, fake_hub):
    path = download_model("sd3", str(tmp_path), dit_folder="diffusion_transformer_768p")
    assert path == str(tmp_path)
    assert fake_hub.calls == [{
        "repo_id": "rain1011/pyramid-flow-sd3",
        "local_dir": str(tmp_path),
        "allow_patterns": [
            "diffusion_transformer_768p/*", "causal_video_vae/*", "text_encoder/*", "text_encoder_2/*",
            "text_encoder_3/*", "tokenizer/*", "tokenizer_2/*", "tokenizer_3/*",
        ],
    }]
    assert not (tmp_path / "diffusion_transformer_384p").exists()
    assert not (tmp_path / "README.md").exists()


def test_download_by_repo_id_and_component(tmp_path, fake_hub):
    download_model("rain1011/pyramid-flow-miniflux", str(tmp_path), components=("text",))
    assert fake_hub.calls[0]["repo_id"] == "rain1011/pyramid-flow-miniflux"
    assert fake_hub.calls[0]["allow_patterns"] == ["text_encoder/*", "text_encoder_2/*", "tokenizer/*", "tokenizer_2/*"]


def test_complete_folder_is_returned_without_download(tmp_path, fake_hub):
    download_model("miniflux", str(tmp_path), dit_folder="diffusion_transformer_image")
    fake_hub.calls.clear()
    assert ensure_model(str(tmp_path), "miniflux", dit_folder="diffusion_transformer_image") == str(tmp_path)
    assert fake_hub.calls == []


def test_missing_files_are_listed_when_download_is_not_allowed(tmp_path, fake_hub):
    download_model("sd3", str(tmp_path), components=("dit", "text"))
    os.remove(tmp_path / "text_encoder_3" / SHARDS[1])
    fake_hub.calls.clear()
    with pytest.raises(CheckpointError) as err:
        ensure_model(str(tmp_path), "sd3")
    message = str(err.value)
    assert "causal_video_vae/: config.json" in message
    assert f"text_encoder_3/: {SHARDS[1]}" in message
    assert "diffusion_transformer_384p" not in message and "tokenizer_3" not in message
    assert "https://huggingface.co/rain1011/pyramid-flow-sd3" in message
    assert f"--local-dir \"{tmp_path}\"" in message
    assert fake_hub.calls == []


def test_allowed_download_fetches_only_incomplete_folders(tmp_path, fake_hub):
    download_model("sd3", str(tmp_path), components=("dit", "text"))
    os.remove(tmp_path / "tokenizer_2" / "merges.txt")
    fake_hub.calls.clear()
    assert ensure_model(str(tmp_path), "sd3", allow_download=True) == str(tmp_path)
    assert fake_hub.calls[0]["allow_patterns"] == ["causal_video_vae/*", "tokenizer_2/*"]
    assert (tmp_path / "tokenizer_2" / "merges.txt").is_file()


def test_folder_the_repository_lacks(tmp_path, fake_hub):
    with pytest.raises(CheckpointError, match="(?s)did not provide.*diffusion_transformer_image/"):
        download_model("sd3", str(tmp_path), dit_folder="diffusion_transformer_image", components=("dit",))


@pytest.mark.parametrize(
    "error",
    [OfflineModeIsEnabled("offline mode is enabled"), LocalEntryNotFoundError("cannot find the requested files")],
)
def test_offline_failure_becomes_a_clear_error(tmp_path, monkeypatch, error):
    monkeypatch.setattr(huggingface_hub, "snapshot_download", FakeHub(error))
    with pytest.raises(CheckpointError, match="(?s)rain1011/pyramid-flow-miniflux.*HF_HUB_OFFLINE") as err:
        ensure_model(str(tmp_path), "miniflux", allow_download=True)
    assert str(tmp_path) in str(err.value)
    assert err.value.__cause__ is error


def test_unknown_names(tmp_path, fake_hub):
    with pytest.raises(ValueError, match="rain1011/pyramid-flow-sd3"):
        download_model("someone/else", str(tmp_path))
    with pytest.raises(ValueError, match="Unknown component"):
        ensure_model(str(tmp_path), "sd3", components=("unet",))
    assert fake_hub.calls == []


def test_unreachable_hub_is_named_not_the_repository(tmp_path, monkeypatch):
    """Without network, huggingface_hub warns and returns the existing local folder: the message must say the Hub
    could not be reached and give the manual download, not blame the repository."""
    import logging

    (tmp_path / "causal_video_vae").mkdir(parents=True)  # an earlier component makes local_dir non-empty

    def offline_snapshot_download(repo_id, *, local_dir, allow_patterns, **kwargs):
        logging.getLogger("huggingface_hub._snapshot_download").warning(
            f"Returning existing local_dir `{local_dir}` as remote repo cannot be accessed in `snapshot_download` "
            "(ConnectError: [Errno -3] Temporary failure in name resolution).")
        return local_dir

    def no_network(self, repo_id, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline_snapshot_download)
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", no_network)
    with pytest.raises(CheckpointError) as err:
        download_model("miniflux", str(tmp_path), components=("dit",))
    message = str(err.value)
    assert "Hugging Face Hub could not be reached" in message and "did not provide" not in message
    assert "hf download rain1011/pyramid-flow-miniflux --include 'diffusion_transformer_384p/*'" in message

    logging.getLogger("huggingface_hub").handlers.clear()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kwargs: kwargs["local_dir"])
    with pytest.raises(CheckpointError, match="could not be reached"):  # no warning: the probe finds no network
        download_model("miniflux", str(tmp_path), components=("dit",))
