"""Loader nodes: the DiT, the causal video VAE and the official (transformers) text encoders, each in a
ModelPatcher."""

import torch

import comfy.model_management as mm
import comfy.ops
from comfy_api.v0_0_2 import io

from ..pyramid_flow.dit import load_dit
from ..pyramid_flow.dtypes import COMPUTE_DTYPES, WEIGHT_DTYPES, compute_dtype, dtype_name_error
from ..pyramid_flow.loading.detect import checkpoint_kind
from ..pyramid_flow.loading.state_dict import CheckpointError
from ..pyramid_flow.text import PyramidTextEncoder
from ..pyramid_flow.vae import load_vae
from . import models
from .base import PyramidFlowNode
from .devices import DEFAULT_DEVICE, device_input, placed_on
from .types import ModelSocket, TextEncoderSocket, VAESocket

CATEGORY = "PyramidFlow/loaders"
FAST_SUFFIX = "_fast"  # fp8 storage plus fp8 matrix multiplication (core UNETLoader's fp8_e4m3fn_fast)
FP8_CHOICES = [name for name in WEIGHT_DTYPES if name.startswith("fp8")] + (
    ["fp8_e4m3fn" + FAST_SUFFIX] if "fp8_e4m3fn" in WEIGHT_DTYPES else [])
DOWNLOAD_TOOLTIP = (
    "Off (default): only local files are used. On: when the selected rain1011/pyramid-flow-* entry is missing, "
    "download just that folder from Hugging Face into models/pyramidflow/ (progress shown on the node)."
)


def _not_a(what: str, name: str, err: Exception, hint: str) -> ValueError:
    return ValueError(f"'{name}' is not a usable Pyramid Flow {what}: {err} {hint}")


def _download_input() -> io.Boolean.Input:
    return io.Boolean.Input("download_if_missing", default=False, tooltip=DOWNLOAD_TOOLTIP)


class PyramidFlowVideoModelLoader(PyramidFlowNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowVideoModelLoader",
            display_name="Pyramid Flow Model Loader",
            category=CATEGORY,
            description="Load a Pyramid Flow diffusion transformer for the Pyramid Flow Sampler.",
            inputs=[
                io.Combo.Input("model", options=models.dit_choices(), tooltip=(
                    "A diffusion_transformer_384p/768p/image folder under models/pyramidflow/<repo>/ (official "
                    "Hugging Face layout), a fine-tune of the official training script (a checkpoint-N folder under "
                    "models/pyramidflow/, or its weight file) or a single-file DiT in models/diffusion_models/. SD3 "
                    "or miniFLUX is detected from the weights.")),
                io.Combo.Input("weight_dtype", options=["bf16", "fp32", *FP8_CHOICES], default="bf16", tooltip=(
                    "Storage dtype of the weights. bf16 is what the model was trained in; fp32 is for GPUs without "
                    "bf16 (2x memory); fp8 halves the DiT's memory (computed in bf16) at a visible quality cost; "
                    "fp8_e4m3fn_fast also multiplies in fp8 on GPUs that can (RTX 40xx, H100), faster, lower quality. "
                    "fp16 is not offered: it produces black or NaN videos.")),
                _download_input(),
                io.Boolean.Input("use_ema", default=False, optional=True, tooltip=(
                    "For a training checkpoint-N folder: load its EMA weights (pytorch_model_ema.bin, written when "
                    "training ran with EMA) instead of the trained weights.")),
                device_input(),
            ],
            outputs=[ModelSocket.Output(display_name="model", tooltip=(
                "The Pyramid Flow DiT, managed by ComfyUI (offloaded and partially loaded as VRAM requires)."))],
        )

    @classmethod
    def validate_inputs(cls, model: str, weight_dtype: str, device: str = DEFAULT_DEVICE):
        return cls.check_combos(model=model, weight_dtype=weight_dtype, device=device)

    @classmethod
    def combo_error(cls, name: str, value, options) -> str:
        if name == "model":
            return models.missing_message(value, "diffusion_models", "DiT", "dit")
        return dtype_name_error(value, options)

    @classmethod
    def process(cls, model: str, weight_dtype: str, download_if_missing: bool = False,
                use_ema: bool = False, device: str = DEFAULT_DEVICE) -> io.NodeOutput:
        return io.NodeOutput(load_dit_patcher(model, weight_dtype, download_if_missing, use_ema, device))


def load_dit_patcher(model: str, weight_dtype: str, download_if_missing: bool, use_ema: bool, device: str):
    """The Model Loader's work: its DiT in a ModelPatcher on ``device``. Also the patcher's ``cached_patcher_init``,
    from which a copy for another device is made (the Multi-GPU node; core's ``deepclone_multigpu``)."""
    path = models.resolve(model, "diffusion_models", download_if_missing, "DiT", "dit")
    fp8_matmul = weight_dtype.endswith(FAST_SUFFIX)
    weight = WEIGHT_DTYPES.get(weight_dtype.removesuffix(FAST_SUFFIX))
    if weight is None:
        raise ValueError(dtype_name_error(weight_dtype, WEIGHT_DTYPES))
    load_device, offload = placed_on(device, mm.get_torch_device(), mm.unet_offload_device())
    compute = compute_dtype(weight)
    if compute == torch.bfloat16 and not mm.should_use_bf16(load_device) and not mm.is_device_cpu(load_device):
        compute = torch.float32
    operations = models.dit_operations(weight, compute, load_device, fp8_matmul)
    try:
        dit, info = load_dit(path, dtype=weight, device=offload, operations=operations,
                            reader=models.read_weights, ema=use_ema,
                            attention_backend=models.comfy_attention_backend())
    except (CheckpointError, KeyError) as err:
        raise _not_a("DiT", model, err, "Pick a diffusion_transformer_* folder or a Pyramid Flow DiT "
                     ".safetensors file (not a VAE, text encoder or another model's checkpoint).") from err
    wrapper = models.PyramidFlowDiTModel(dit, info, checkpoint_kind(path), weight, compute)
    patcher = models.make_patcher(wrapper, load_device, offload)
    patcher.cached_patcher_init = (load_dit_patcher, (model, weight_dtype, False, use_ema, device))
    return patcher


class PyramidFlowVideoVAELoader(PyramidFlowNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowVideoVAELoader",
            display_name="Pyramid Flow VAE Loader",
            category=CATEGORY,
            description="Load the Pyramid Flow causal video VAE (8x spatial, 8x temporal compression).",
            inputs=[
                io.Combo.Input("vae", options=models.vae_choices(), tooltip=(
                    "The causal_video_vae folder under models/pyramidflow/<repo>/, or a single-file Pyramid Flow VAE "
                    "in models/vae/.")),
                io.Combo.Input("dtype", options=["auto", *COMPUTE_DTYPES], default="auto", tooltip=(
                    "auto: bf16 where the device supports it, else fp32 (ComfyUI's VAE rule).")),
                _download_input(),
                device_input(),
            ],
            outputs=[VAESocket.Output(display_name="vae", tooltip="The Pyramid Flow causal video VAE, managed by ComfyUI.")],
        )

    @classmethod
    def validate_inputs(cls, vae: str, dtype: str, device: str = DEFAULT_DEVICE):
        return cls.check_combos(vae=vae, dtype=dtype, device=device)

    @classmethod
    def combo_error(cls, name: str, value, options) -> str:
        if name == "vae":
            return models.missing_message(value, "vae", "VAE", "vae")
        return dtype_name_error(value, options)

    @classmethod
    def process(cls, vae: str, dtype: str, download_if_missing: bool = False,
                device: str = DEFAULT_DEVICE) -> io.NodeOutput:
        path = models.resolve(vae, "vae", download_if_missing, "VAE", "vae")
        load_device, offload = placed_on(device, mm.vae_device(), mm.vae_offload_device())
        if dtype == "auto":
            torch_dtype = mm.vae_dtype(load_device, [torch.bfloat16, torch.float32])
        else:
            torch_dtype = COMPUTE_DTYPES[dtype]
        try:
            module = load_vae(path, dtype=torch_dtype, device=offload, operations=comfy.ops.disable_weight_init,
                              reader=models.read_weights)
        except (CheckpointError, KeyError) as err:
            raise _not_a("VAE", vae, err, "Pick the causal_video_vae folder or pyramid_flow_vae*.safetensors.") from err
        return io.NodeOutput(models.make_patcher(models.PyramidFlowVAEModel(module, torch_dtype), load_device, offload))


class PyramidFlowVideoTextEncoderLoader(PyramidFlowNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowVideoTextEncoderLoader",
            display_name="Pyramid Flow Text Encoder Loader",
            category=CATEGORY,
            description="Load the official Pyramid Flow text encoders (transformers) from a Hugging Face folder.",
            inputs=[
                io.Combo.Input("model_folder", options=models.text_encoder_choices(), tooltip=(
                    "A folder under models/pyramidflow/ holding text_encoder*/ and tokenizer*/ as in the Hugging Face "
                    "repo (SD3: CLIP-L, CLIP-G, T5-XXL; miniFLUX: CLIP-L, T5-XXL). To reuse clip_l/clip_g/t5xxl files "
                    "you already have, use DualCLIPLoader (type flux) or TripleCLIPLoader instead and connect its "
                    "CLIP to the text encode node.")),
                io.Combo.Input("dtype", options=list(COMPUTE_DTYPES), default="bf16",
                               tooltip="Weight dtype of the text encoders (T5-XXL is ~9.5 GB in bf16)."),
                _download_input(),
                device_input(),
            ],
            outputs=[TextEncoderSocket.Output(display_name="text_encoder",
                                              tooltip="The official Pyramid Flow text encoders, managed by ComfyUI.")],
        )

    @classmethod
    def validate_inputs(cls, model_folder: str, dtype: str, device: str = DEFAULT_DEVICE):
        return cls.check_combos(model_folder=model_folder, dtype=dtype, device=device)

    @classmethod
    def combo_error(cls, name: str, value, options) -> str:
        if name == "model_folder":
            return models.missing_message(value, None, "text encoder folder", "text")
        return dtype_name_error(value, options)

    @classmethod
    def process(cls, model_folder: str, dtype: str, download_if_missing: bool = False,
                device: str = DEFAULT_DEVICE) -> io.NodeOutput:
        root = models.resolve(model_folder, None, download_if_missing, "text encoder folder", "text",
                              require_weights=False)
        variant = models.text_variant_of_folder(root)
        if variant is None:
            raise ValueError(f"'{model_folder}' has no complete set of text_encoder*/ and tokenizer*/ folders of a "
                             "rain1011/pyramid-flow-* repository. Download them, or use DualCLIPLoader / "
                             "TripleCLIPLoader with the clip_l / clip_g / t5xxl files instead.")
        torch_dtype = COMPUTE_DTYPES[dtype]
        load_device, offload = placed_on(device, mm.text_encoder_device(), mm.text_encoder_offload_device())
        try:
            encoder = PyramidTextEncoder.from_pretrained(root, variant.name, dtype=torch_dtype, device=offload)
        except (CheckpointError, KeyError, OSError) as err:
            raise _not_a("text encoder folder", model_folder, err,
                         "It needs the text_encoder*/ and tokenizer*/ folders of rain1011/pyramid-flow-*.") from err
        wrapper = models.PyramidFlowTextModel(encoder, torch_dtype, variant.name)
        return io.NodeOutput(models.make_patcher(wrapper, load_device, offload))


NODES = [PyramidFlowVideoModelLoader, PyramidFlowVideoVAELoader, PyramidFlowVideoTextEncoderLoader]
