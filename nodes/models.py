"""Model files and model management: folders, name lists, optional downloads, ModelPatcher wrappers.

All weights reach the GPU only through ``comfy.model_management.load_models_gpu``; nothing here calls
``.to(device)`` on a model.
"""

import logging
import os
from typing import Dict, List, Mapping, Optional

import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.utils
import folder_paths

from ..pyramid_flow.attention import AttentionBackend
from ..pyramid_flow.loading import hub
from ..pyramid_flow.loading.state_dict import WEIGHT_EXTENSIONS, WEIGHT_FILE_NAMES
from ..pyramid_flow.variants import VARIANTS, Variant

log = logging.getLogger("pyramid_flow")

PYRAMIDFLOW_FOLDER = "pyramidflow"  # models/pyramidflow/<repo>/<component>/ (official Hugging Face layout)


def register_folders() -> None:
    """Add models/pyramidflow to ComfyUI's folder registry (extra_model_paths.yaml may add more roots)."""
    default = os.path.join(folder_paths.models_dir, PYRAMIDFLOW_FOLDER)
    if default not in folder_paths.folder_names_and_paths.get(PYRAMIDFLOW_FOLDER, ([], set()))[0]:
        folder_paths.add_model_folder_path(PYRAMIDFLOW_FOLDER, default, is_default=True)


def pyramidflow_roots() -> List[str]:
    return [p for p in folder_paths.get_folder_paths(PYRAMIDFLOW_FOLDER) if os.path.isdir(p)]


def _has_weights(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, name)) for name in WEIGHT_FILE_NAMES)


def _repo_entries(component_filter) -> List[str]:
    """'<repo>/<component>' for every component folder with weights under models/pyramidflow/<repo>/."""
    found = set()
    for root in pyramidflow_roots():
        for repo in sorted(os.listdir(root)):
            repo_dir = os.path.join(root, repo)
            if not os.path.isdir(repo_dir):
                continue
            for component in sorted(os.listdir(repo_dir)):
                path = os.path.join(repo_dir, component)
                if component_filter(component) and os.path.isdir(path) and _has_weights(path):
                    found.add(f"{repo}/{component}")
    return sorted(found)


def _files(folder: str) -> List[str]:
    """Files of a ComfyUI model folder in the formats that load (no .pkl or other pickles of objects)."""
    try:
        names = folder_paths.get_filename_list(folder)
    except KeyError:
        return []
    return [name.replace(os.sep, "/") for name in names if name.lower().endswith(WEIGHT_EXTENSIONS)]


def _with_downloadable(entries: List[str], downloadable: List[str]) -> List[str]:
    return entries + [name for name in downloadable if name not in entries]


TRAINING_FOLDER_PREFIX = "checkpoint-"  # accelerate's checkpoint-N folders of the official training script


def _training_folders() -> List[str]:
    """'checkpoint-N' and '<repo>/checkpoint-N' folders with weights under models/pyramidflow/."""
    found = _repo_entries(lambda name: name.startswith(TRAINING_FOLDER_PREFIX))
    for root in pyramidflow_roots():
        found += [name for name in sorted(os.listdir(root))
                  if name.startswith(TRAINING_FOLDER_PREFIX) and _has_weights(os.path.join(root, name))]
    return sorted(set(found))


def dit_choices() -> List[str]:
    folders = _repo_entries(lambda name: name.startswith("diffusion_transformer")) + _training_folders()
    known = [f"{v.repo_folder}/{sub}" for v in VARIANTS.values() for sub in v.dit_folders]
    return _with_downloadable(folders, known) + _files("diffusion_models")


def vae_choices() -> List[str]:
    folders = _repo_entries(lambda name: name == hub.VAE_FOLDER)
    return _with_downloadable(folders, [f"{v.repo_folder}/{hub.VAE_FOLDER}" for v in VARIANTS.values()]) + _files("vae")


def text_variant_of_folder(root: str) -> Optional[Variant]:
    """The variant whose text encoder and tokenizer folders are all in ``root`` (the one needing most, if several)."""
    complete = [v for v in VARIANTS.values()
                if all(os.path.isdir(os.path.join(root, sub)) for sub in v.text_encoder_folders + v.tokenizer_folders)]
    return max(complete, key=lambda v: len(v.text_encoder_folders), default=None)


def text_encoder_choices() -> List[str]:
    found = {repo for root in pyramidflow_roots() for repo in sorted(os.listdir(root))
             if text_variant_of_folder(os.path.join(root, repo)) is not None}
    return _with_downloadable(sorted(found), [v.repo_folder for v in VARIANTS.values()])


def _known_variant(name: str) -> Optional[Variant]:
    repo = name.split("/")[0]
    return next((v for v in VARIANTS.values() if v.repo_folder == repo), None)


def _find_repo_path(name: str) -> Optional[str]:
    for root in pyramidflow_roots():
        path = os.path.join(root, *name.split("/"))
        if os.path.isdir(path):
            return path
    return None


COMPONENT_FOLDERS = {  # which folders of a repository hold each component
    "dit": lambda name: name.startswith(("diffusion_transformer", TRAINING_FOLDER_PREFIX)),
    "vae": lambda name: name == hub.VAE_FOLDER,
}


def resolve(name: str, file_folder: Optional[str], download: bool, what: str, component: str,
            require_weights: bool = True) -> str:
    """Folder under models/pyramidflow/ or file under models/<file_folder>/; downloads the one missing folder
    (``component``: 'dit', 'vae' or 'text') of a known repo on request."""
    path = _find_repo_path(name)
    if path is not None and (not require_weights or _has_weights(path)):
        return path
    if file_folder is not None:
        full = folder_paths.get_full_path(file_folder, name)
        if full is not None and os.path.isfile(full):
            return full
    variant = _known_variant(name)
    if variant is not None and download and (path is None or "/" in name):  # not a whole repository for one folder
        return download_component(name, variant, component)
    raise FileNotFoundError(missing_message(name, file_folder, what, component))


def missing_message(name: str, file_folder: Optional[str], what: str, component: str) -> str:
    """Why ``name`` is not a usable model of ``component``, naming what is there instead: a repository folder
    picked as the component, a folder named like a weight file, or nothing at all (with the download hint)."""
    path = _find_repo_path(name)
    if path is not None and component == "text":
        return (f"'{name}' (models/{PYRAMIDFLOW_FOLDER}/{name}/) has no complete set of text_encoder*/ and "
                "tokenizer*/ folders of a rain1011/pyramid-flow-* repository.")
    if path is not None:
        inside = sorted(f"{name}/{sub}" for sub in os.listdir(path) if COMPONENT_FOLDERS.get(component, bool)(sub)
                        and os.path.isdir(os.path.join(path, sub)) and _has_weights(os.path.join(path, sub)))
        if inside:
            return (f"'{name}' is a model repository folder, not a {what}: pick one of the {what} folders inside it: "
                    f"{', '.join(inside)}.")
        return (f"'{name}' (models/{PYRAMIDFLOW_FOLDER}/{name}/) holds no weight file: expected one of "
                f"{', '.join(WEIGHT_FILE_NAMES)}. Download the complete folder.")
    folders = [os.path.join(root, name) for root in folder_paths.get_folder_paths(file_folder)] if file_folder else []
    if any(os.path.isdir(folder) for folder in folders):
        return (f"'{name}' in models/{file_folder}/ is a folder, not a weight file: pick the file inside it, or put "
                f"the folder under models/{PYRAMIDFLOW_FOLDER}/ if it is an official component folder.")
    variant = _known_variant(name)
    where = f"models/{PYRAMIDFLOW_FOLDER}/{name}/" + (f" or models/{file_folder}/{name}" if file_folder else "")
    hint = (f" Turn on 'download_if_missing' to fetch it from https://huggingface.co/{variant.repo_id}, or download"
            " that folder yourself." if variant is not None else "")
    return f"Pyramid Flow {what} '{name}' not found: expected {where}.{hint}"


def _node_progress_tqdm():
    """A tqdm class that mirrors huggingface_hub's download progress onto the running node's progress bar."""
    from tqdm.auto import tqdm

    class NodeProgress(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.node_bar = comfy.utils.ProgressBar(self.total or 1)

        def update(self, n=1):
            shown = super().update(n)
            self.node_bar.update_absolute(self.n, self.total or 1)
            return shown

    return NodeProgress


def download_component(name: str, variant: Variant, component: str) -> str:
    """Download '<repo>[/<folder>]' of a known repo into models/pyramidflow/<repo>/; returns the local path."""
    _, _, folder = name.partition("/")
    target = os.path.join(folder_paths.get_folder_paths(PYRAMIDFLOW_FOLDER)[0], variant.repo_folder)
    log.info("Pyramid Flow: downloading %s of %s into %s", folder or "the text encoders", variant.repo_id, target)
    dit_folder = folder if component == "dit" else hub.DEFAULT_DIT_FOLDER
    hub.download_model(variant.repo_id, target, dit_folder=dit_folder, components=(component,),
                       tqdm_class=_node_progress_tqdm())
    return os.path.join(target, folder) if folder else target


def read_weights(path: str) -> Mapping[str, torch.Tensor]:
    """One safetensors file through ComfyUI's own loader: memory-mapped, and under dynamic VRAM (0.33+) tensors
    backed by the file, which load_models_gpu streams to the GPU without a second copy in RAM."""
    return comfy.utils.load_torch_file(path, safe_load=True)


def make_patcher(module: torch.nn.Module, load_device, offload_device):
    """A ModelPatcher of ``module``: CoreModelPatcher where it exists (rebound to the dynamic-VRAM patcher on
    ComfyUI 0.3x+ at start-up, so looked up at call time), else ModelPatcher."""
    patcher_class = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    return patcher_class(module, load_device=load_device, offload_device=offload_device)


def comfy_attention_backend() -> AttentionBackend:
    """ComfyUI's ``optimized_attention`` as a DiT's attention backend, so --use-sage-attention,
    --use-flash-attention and xformers take effect for the models this pack loads (and no others). Only ComfyUI's
    SDPA backend gets the key-padding mask; the others are never given one (they ignore it or fall back to SDPA):
    the DiT splits those calls so that none needs it."""
    import comfy.ldm.modules.attention as comfy_attention

    backend = comfy_attention.optimized_attention

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None) -> torch.Tensor:
        return backend(q, k, v, q.shape[1], mask=mask, skip_reshape=True, skip_output_reshape=True)

    return AttentionBackend(attend, supports_mask=backend is comfy_attention.attention_pytorch)


def dit_operations(weight_dtype: torch.dtype, compute_dtype: torch.dtype, load_device, fp8_matmul: bool):
    """The comfy.ops namespace core models get for these dtypes (``comfy.ops.pick_operations``): no-init layers when
    storage = compute dtype, casting layers for fp8 storage, fp8 matrix multiplication where the device has it and
    ``fp8_matmul`` (or ComfyUI's ``--fast``) asks for it."""
    return comfy.ops.pick_operations(weight_dtype, compute_dtype, load_device=load_device, fp8_optimizations=fp8_matmul)


def device_copy(patcher, device: torch.device):
    """A ModelPatcher of the same DiT on ``device``, made once and kept with the model (every clone of ``patcher``
    shares it): rebuilt by the loader that made ``patcher`` (its ``cached_patcher_init``), through core's
    ``deepclone_multigpu`` where the running ComfyUI has it."""
    copies = patcher.model.device_copies
    if str(device) not in copies:
        init = getattr(patcher, "cached_patcher_init", None)
        if init is None:
            raise ValueError("This model was not made by 'Pyramid Flow Model Loader', so it cannot be copied to "
                             f"{device}: load it with that node.")
        if hasattr(patcher, "deepclone_multigpu"):  # ComfyUI 0.33+
            copy = patcher.deepclone_multigpu(new_load_device=device)
        else:
            factory, arguments = init[0], init[1]
            copy = factory(*arguments[:-1], str(device))  # the loader's last argument is the device
        copies[str(device)] = copy
    return copies[str(device)]


class PyramidFlowDiTModel(torch.nn.Module):
    """What the model patcher manages: the DiT plus its identity (variant, checkpoint kind, dtypes)."""

    def __init__(self, dit: torch.nn.Module, info, checkpoint: Optional[str], weight_dtype, compute_dtype):
        super().__init__()
        self.device_copies: Dict[str, object] = {}  # device -> ModelPatcher of a copy (the Multi-GPU node)
        self.diffusion_model = dit
        self.info = info
        self.variant_name = info.variant
        self.checkpoint = checkpoint
        self.weight_dtype = weight_dtype
        self.compute_dtype = compute_dtype

    def get_dtype(self):
        return self.weight_dtype

    def forward(self, *args, **kwargs):
        return self.diffusion_model(*args, **kwargs)


class PyramidFlowVAEModel(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module, dtype):
        super().__init__()
        self.vae = vae
        self.dtype_ = dtype

    def get_dtype(self):
        return self.dtype_


class PyramidFlowTextModel(torch.nn.Module):
    """The official transformers text encoders (a PyramidTextEncoder module) for the patcher."""

    def __init__(self, encoder: torch.nn.Module, dtype, variant_name: str):
        super().__init__()
        self.encoder = encoder
        self.dtype_ = dtype
        self.variant_name = variant_name

    def get_dtype(self):
        return self.dtype_
