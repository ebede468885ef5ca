"""Loader nodes: DiT, causal video VAE and the official (transformers) text encoders, each in a ModelPatcher."""

import os

import torch

import comfy.model_management as mm
import comfy.ops

from ..pyramid_flow.dit import load_dit
from ..pyramid_flow.loading.state_dict import CheckpointError
from ..pyramid_flow.pipeline import checkpoint_kind
from ..pyramid_flow.text import PyramidTextEncoder
from ..pyramid_flow.vae import load_vae
from . import models

CATEGORY = "PyramidFlow/loaders"
MODEL_TYPE = "PYRAMID_FLOW_VIDEO_MODEL"
VAE_TYPE = "PYRAMID_FLOW_VIDEO_VAE"
TEXT_ENCODER_TYPE = "PYRAMID_FLOW_VIDEO_TEXT_ENCODER"

DOWNLOAD_TOOLTIP = (
    "Off (default): only local files are used. On: when the selected rain1011/pyramid-flow-* entry is missing, "
    "download just that folder from Hugging Face into models/pyramidflow/ (progress shown on the node)."
)


def _not_a(what: str, name: str, err: Exception, hint: str) -> ValueError:
    return ValueError(f"'{name}' is not a usable Pyramid Flow {what}: {err} {hint}")


class PyramidFlowVideoModelLoader:
    """Loads a Pyramid Flow DiT (SD3 MMDiT or miniFLUX; variant detected from the weights)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (models.dit_choices(), {
                    "tooltip": "A diffusion_transformer_384p/768p folder under models/pyramidflow/<repo>/ (official "
                               "Hugging Face layout) or a single-file DiT in models/diffusion_models/. SD3 or "
                               "miniFLUX is detected from the weights."}),
                "weight_dtype": (["bf16", "fp32", "fp8_e4m3fn", "fp8_e5m2"], {
                    "default": "bf16",
                    "tooltip": "Storage dtype of the weights. bf16 is what the model was trained in; fp32 is for GPUs "
                               "without bf16 (2x memory); fp8 halves memory (computed in bf16) at a visible quality "
                               "cost. fp16 is not offered: it produces black or NaN videos."}),
                "download_if_missing": ("BOOLEAN", {"default": False, "tooltip": DOWNLOAD_TOOLTIP}),
            }
        }

    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The Pyramid Flow DiT, managed by ComfyUI (offloaded and partially loaded as VRAM requires).",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Load a Pyramid Flow diffusion transformer for the Pyramid Flow Sampler."

    def load(self, model, weight_dtype, download_if_missing=False):
        path = models.resolve(model, "diffusion_models", download_if_missing, "DiT", "dit")
        weight = models.DTYPES.get(weight_dtype) or models.FP8_DTYPES.get(weight_dtype)
        if weight is None:
            raise ValueError(f"weight_dtype '{weight_dtype}' is not supported by this PyTorch build.")
        load_device, offload = mm.get_torch_device(), mm.unet_offload_device()
        compute = torch.float32 if weight == torch.float32 else torch.bfloat16
        if compute == torch.bfloat16 and not mm.should_use_bf16(load_device) and not mm.is_device_cpu(load_device):
            compute = torch.float32
        try:
            dit, info = load_dit(path, dtype=weight, device=offload, operations=models.dit_operations(weight, compute))
        except (CheckpointError, KeyError) as err:
            raise _not_a("DiT", model, err, "Pick a diffusion_transformer_* folder or a Pyramid Flow DiT "
                         ".safetensors file (not a VAE, text encoder or another model's checkpoint).") from err
        wrapper = models.PyramidFlowDiTModel(dit, info, checkpoint_kind(path), weight, compute)
        return (models.make_patcher(wrapper, load_device, offload),)


class PyramidFlowVideoVAELoader:
    """Loads the causal video VAE (shared by both variants)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": (models.vae_choices(), {
                    "tooltip": "The causal_video_vae folder under models/pyramidflow/<repo>/, or a single-file "
                               "Pyramid Flow VAE in models/vae/."}),
                "dtype": (["auto", "bf16", "fp32"], {
                    "default": "auto",
                    "tooltip": "auto: bf16 where the device supports it, else fp32 (ComfyUI's VAE rule)."}),
                "download_if_missing": ("BOOLEAN", {"default": False, "tooltip": DOWNLOAD_TOOLTIP}),
            }
        }

    RETURN_TYPES = (VAE_TYPE,)
    RETURN_NAMES = ("vae",)
    OUTPUT_TOOLTIPS = ("The Pyramid Flow causal video VAE, managed by ComfyUI.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Load the Pyramid Flow causal video VAE (8x spatial, 8x temporal compression)."

    def load(self, vae, dtype, download_if_missing=False):
        path = models.resolve(vae, "vae", download_if_missing, "VAE", "vae")
        load_device, offload = mm.vae_device(), mm.vae_offload_device()
        if dtype == "auto":
            torch_dtype = mm.vae_dtype(load_device, [torch.bfloat16, torch.float32])
        else:
            torch_dtype = models.DTYPES[dtype]
        try:
            module = load_vae(path, dtype=torch_dtype, device=offload, operations=comfy.ops.disable_weight_init)
        except (CheckpointError, KeyError) as err:
            raise _not_a("VAE", vae, err, "Pick the causal_video_vae folder or pyramid_flow_vae*.safetensors.") from err
        return (models.make_patcher(models.PyramidFlowVAEModel(module, torch_dtype), load_device, offload),)


class PyramidFlowVideoTextEncoderLoader:
    """Loads the official text_encoder*/tokenizer* folders with transformers (alternative to core CLIP loaders)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_folder": (models.text_encoder_choices(), {
                    "tooltip": "A folder under models/pyramidflow/ holding text_encoder*/ and tokenizer*/ as in the "
                               "Hugging Face repo (SD3: CLIP-L, CLIP-G, T5-XXL; miniFLUX: CLIP-L, T5-XXL). To reuse "
                               "clip_l/clip_g/t5xxl files you already have, use DualCLIPLoader (type flux) or "
                               "TripleCLIPLoader instead and connect its CLIP to the text encode node."}),
                "dtype": (["bf16", "fp32"], {
                    "default": "bf16", "tooltip": "Weight dtype of the text encoders (T5-XXL is ~9.5 GB in bf16)."}),
                "download_if_missing": ("BOOLEAN", {"default": False, "tooltip": DOWNLOAD_TOOLTIP}),
            }
        }

    RETURN_TYPES = (TEXT_ENCODER_TYPE,)
    RETURN_NAMES = ("text_encoder",)
    OUTPUT_TOOLTIPS = ("The official Pyramid Flow text encoders, managed by ComfyUI.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Load the official Pyramid Flow text encoders (transformers) from a Hugging Face folder."

    def load(self, model_folder, dtype, download_if_missing=False):
        root = models.resolve(model_folder, None, download_if_missing, "text encoder folder", "text",
                              require_weights=False)
        variant = "sd3" if os.path.isdir(os.path.join(root, "text_encoder_3")) else "miniflux"
        torch_dtype = models.DTYPES[dtype]
        load_device, offload = mm.text_encoder_device(), mm.text_encoder_offload_device()
        try:
            encoder = PyramidTextEncoder.from_pretrained(root, variant, dtype=torch_dtype, device=offload)
        except (CheckpointError, KeyError, OSError) as err:
            raise _not_a("text encoder folder", model_folder, err,
                         "It needs the text_encoder*/ and tokenizer*/ folders of rain1011/pyramid-flow-*.") from err
        wrapper = models.PyramidFlowTextModel(encoder, torch_dtype, variant)
        return (models.make_patcher(wrapper, load_device, offload),)
