"""The official Hugging Face folders: which files a run needs, checking them, and fetching them on request.

Nothing here touches the network unless ``download_model`` or ``ensure_model(..., allow_download=True)`` is
called. Downloads go through ``huggingface_hub.snapshot_download`` into a plain folder (``local_dir``) with
``allow_patterns``, so only the folders a run needs come down (one DiT resolution, not all three).
"""

import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..variants import Variant, get_variant
from .state_dict import WEIGHT_FILE_NAMES, CheckpointError, read_json

DIT_FOLDERS = ("diffusion_transformer_384p", "diffusion_transformer_768p", "diffusion_transformer_image")
DEFAULT_DIT_FOLDER = DIT_FOLDERS[0]
VAE_FOLDER = "causal_video_vae"
COMPONENTS = ("dit", "vae", "text")

# A requirement is a tuple of file names of which one must exist.
Requirement = Tuple[str, ...]
MODEL_FILES: Tuple[Requirement, ...] = (("config.json",), WEIGHT_FILE_NAMES)
CLIP_TOKENIZER_FILES: Tuple[Requirement, ...] = (("tokenizer_config.json",), ("vocab.json",), ("merges.txt",))
T5_TOKENIZER_FILES: Tuple[Requirement, ...] = (("tokenizer_config.json",), ("spiece.model", "tokenizer.json"))
Requirements = Dict[str, Tuple[Requirement, ...]]  # folder -> the files it must hold


def resolve_repo(repo_id_or_variant: str) -> Tuple[Variant, str]:
    """(variant, repo id) for a variant name, an official model_name or a repository id."""
    variant = get_variant(repo_id_or_variant)
    return variant, variant.repo_id


def folder_requirements(
    variant: Variant, dit_folder: str = DEFAULT_DIT_FOLDER, components: Sequence[str] = COMPONENTS
) -> Requirements:
    """The folders the chosen components live in, each with the files it must hold."""
    unknown = sorted(set(components) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"Unknown component(s) {unknown}: choose from {list(COMPONENTS)}.")
    folders: Requirements = {}
    if "dit" in components:
        folders[dit_folder] = MODEL_FILES
    if "vae" in components:
        folders[VAE_FOLDER] = MODEL_FILES
    if "text" in components:
        *clip_tokenizers, t5_tokenizer = variant.tokenizer_folders
        folders.update({folder: MODEL_FILES for folder in variant.text_encoder_folders})
        folders.update({folder: CLIP_TOKENIZER_FILES for folder in clip_tokenizers})
        folders[t5_tokenizer] = T5_TOKENIZER_FILES
    return folders


def _missing_shards(folder: str, present: Iterable[str]) -> List[str]:
    """Shards named by a sharded checkpoint's index that are not on disk (an interrupted download)."""
    missing = []
    for name in present:
        if name.endswith(".index.json"):
            shards = sorted(set((read_json(os.path.join(folder, name)) or {}).get("weight_map", {}).values()))
            missing += [shard for shard in shards if not os.path.isfile(os.path.join(folder, shard))]
    return missing


def _missing(root: str, requirements: Requirements) -> Dict[str, List[str]]:
    missing: Dict[str, List[str]] = {}
    for folder, needed in requirements.items():
        path = os.path.join(root, folder)
        present = [name for req in needed for name in req if os.path.isfile(os.path.join(path, name))]
        lacking = [" | ".join(req) for req in needed if not set(req) & set(present)]
        lacking += _missing_shards(path, present)
        if lacking:
            missing[folder] = lacking
    return missing


def _missing_message(root: str, repo_id: str, missing: Dict[str, List[str]]) -> str:
    lines = [f"  {folder}/: {', '.join(files)}" for folder, files in missing.items()]
    includes = " ".join(f"'{folder}/*'" for folder in missing)
    return (
        f"The Pyramid Flow model folder '{root}' is incomplete. Missing:\n" + "\n".join(lines) + "\n"
        f"Download these folders from https://huggingface.co/{repo_id} into '{root}', e.g. "
        f"`hf download {repo_id} --include {includes} --local-dir \"{root}\"` "
        "(older huggingface_hub: `huggingface-cli download`), or allow the automatic download."
    )


class _HubWarnings(logging.Handler):
    """Collects huggingface_hub's warnings during a download: without network it warns and returns the local folder
    instead of raising."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _hub_unreachable(repo_id: str, warnings: List[str]) -> Optional[str]:
    """Why the Hub could not be reached during the download, or None when it answered."""
    import huggingface_hub

    for message in warnings:
        if "cannot be accessed" in message or "offline" in message.lower():
            return message
    try:
        huggingface_hub.HfApi().repo_info(repo_id)
    except Exception as err:  # no network, offline mode, DNS, proxy, timeouts: whatever stopped the download
        return f"{type(err).__name__}: {err}"
    return None


def _download(repo_id: str, target_dir: str, requirements: Requirements, tqdm_class=None) -> str:
    import huggingface_hub  # only needed when downloading

    allow_patterns = [f"{folder}/*" for folder in requirements]
    progress = {"tqdm_class": tqdm_class} if tqdm_class is not None else {}
    manual = (f"Without network access (or with HF_HUB_OFFLINE=1), download the folders on a machine that has it: "
              f"`hf download {repo_id} --include "
              + " ".join(f"'{p}'" for p in allow_patterns) + f" --local-dir \"{target_dir}\"`, or copy the folders "
              f"into '{target_dir}'.")
    hub_log, warnings = logging.getLogger("huggingface_hub"), _HubWarnings()
    hub_log.addHandler(warnings)
    try:
        huggingface_hub.snapshot_download(repo_id, local_dir=target_dir, allow_patterns=allow_patterns, **progress)
    except OSError as err:  # offline mode, no network, HTTP errors (gated, not found), disk full
        raise CheckpointError(
            f"Downloading {', '.join(allow_patterns)} from https://huggingface.co/{repo_id} into '{target_dir}' "
            f"failed: {err}\n{manual}"
        ) from err
    finally:
        hub_log.removeHandler(warnings)
    missing = _missing(target_dir, requirements)
    if missing:
        reason = _hub_unreachable(repo_id, warnings.messages)
        if reason is not None:
            raise CheckpointError(f"The Hugging Face Hub could not be reached ({reason}), so nothing was downloaded. "
                                  + manual)
        # snapshot_download is silent when a pattern matches nothing, e.g. a DiT folder the repository lacks.
        raise CheckpointError(
            f"https://huggingface.co/{repo_id} did not provide every needed file. "
            + _missing_message(target_dir, repo_id, missing)
        )
    return target_dir


def download_model(
    repo_id_or_variant: str,
    target_dir: str,
    dit_folder: str = DEFAULT_DIT_FOLDER,
    components: Sequence[str] = COMPONENTS,
    tqdm_class=None,
) -> str:
    """Download the folders of ``components`` ("dit", "vae", "text") into ``target_dir``; returns it.

    Files already in ``target_dir`` from an earlier download are not fetched again. Progress goes to
    huggingface_hub's tqdm bars, or to ``tqdm_class`` (a tqdm subclass, e.g. one that drives a UI progress bar).
    """
    variant, repo_id = resolve_repo(repo_id_or_variant)
    return _download(repo_id, target_dir, folder_requirements(variant, dit_folder, components), tqdm_class)


def ensure_model(
    root: str,
    variant: str,
    dit_folder: str = DEFAULT_DIT_FOLDER,
    components: Sequence[str] = COMPONENTS,
    allow_download: bool = False,
) -> str:
    """``root`` once every needed file is there; downloads the incomplete folders only if ``allow_download``.

    Raises ``CheckpointError`` listing the missing files and where to put them otherwise.
    """
    resolved, repo_id = resolve_repo(variant)
    requirements = folder_requirements(resolved, dit_folder, components)
    missing = _missing(root, requirements)
    if not missing:
        return root
    if not allow_download:
        raise CheckpointError(_missing_message(root, repo_id, missing))
    return _download(repo_id, root, {folder: requirements[folder] for folder in missing})
