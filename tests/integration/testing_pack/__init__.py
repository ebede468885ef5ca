"""Test-only ComfyUI nodes for the integration lane (never shipped: lives under tests/).

- ``PyramidFlowTest_TinyDualCLIPLoader`` / ``PyramidFlowTest_TinyTripleCLIPLoader``: the core loaders' exact path,
  ``comfy.sd.load_clip(paths, embedding_directory, clip_type)``, plus ``model_options`` that shrink ComfyUI's
  fixed CLIP-L / CLIP-G / T5-XXL configs to the tiny random checkpoints (read from a ``<file>.json`` sidecar).
  Core DualCLIPLoader/TripleCLIPLoader cannot take these: they build the full-size architectures. Input names
  equal the core loaders', so a workflow's loader node can be swapped by changing only ``class_type``.
- ``PyramidFlowTest_SaveTensors``: writes IMAGE / LATENT tensors losslessly to the output folder, so the test can
  compare the nodes' frames with ``pyramid_flow`` called directly.
"""

import json
import os

import comfy.sd
import folder_paths
from safetensors.torch import save_file


def build_tiny_clip(state_dicts, sidecars, clip_type, dtype=None):
    """A real comfy.sd.CLIP (real CLIP/T5 modules, tokenizers and ModelPatcher) with tiny configs.

    flux goes through ``comfy.sd.load_text_encoder_state_dicts`` itself: its long-CLIP probe rewrites
    ``clip_l_model_config`` from ``model_config``, so the tiny CLIP-L config is passed there as well. For sd3
    that probe would give CLIP-L and CLIP-G the same config, so the CLIP object is assembled from the same
    parts the function uses (``sd3_clip`` + ``SD3Tokenizer`` -> ``comfy.sd.CLIP`` -> ``load_sd`` per file).
    """
    import types

    import comfy.text_encoders.sd3_clip

    options = {f"{side['model_name']}_model_config": dict(side["config"]) for side in sidecars}
    if dtype is not None:
        options["dtype"] = dtype
    if clip_type == "flux":
        options["model_config"] = dict(options["clip_l_model_config"])
        return comfy.sd.load_text_encoder_state_dicts(state_dicts, clip_type=comfy.sd.CLIPType.FLUX,
                                                      model_options=options)
    target = types.SimpleNamespace(params={}, clip=comfy.text_encoders.sd3_clip.sd3_clip(),
                                   tokenizer=comfy.text_encoders.sd3_clip.SD3Tokenizer)
    clip = comfy.sd.CLIP(target, model_options=options)
    for sd in state_dicts:
        clip.load_sd(sd)
    return clip


def _load(names, clip_type):
    import comfy.utils

    paths = [folder_paths.get_full_path_or_raise("text_encoders", name) for name in names]
    sidecars = []
    for path in paths:
        with open(path + ".json", encoding="utf-8") as f:
            sidecars.append(json.load(f))
    states = [comfy.utils.load_torch_file(path, safe_load=True) for path in paths]
    return (build_tiny_clip(states, sidecars, clip_type),)


class PyramidFlowTest_TinyDualCLIPLoader:
    @classmethod
    def INPUT_TYPES(cls):
        files = folder_paths.get_filename_list("text_encoders")
        return {"required": {"clip_name1": (files,), "clip_name2": (files,), "type": (["flux", "sd3"],)},
                "optional": {"device": (["default", "cpu"], {"advanced": True})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"
    CATEGORY = "_for_testing"

    def load_clip(self, clip_name1, clip_name2, type, device="default"):
        return _load([clip_name1, clip_name2], type)


class PyramidFlowTest_TinyTripleCLIPLoader:
    @classmethod
    def INPUT_TYPES(cls):
        files = folder_paths.get_filename_list("text_encoders")
        return {"required": {"clip_name1": (files,), "clip_name2": (files,), "clip_name3": (files,)}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"
    CATEGORY = "_for_testing"

    def load_clip(self, clip_name1, clip_name2, clip_name3):
        return _load([clip_name1, clip_name2, clip_name3], "sd3")


class PyramidFlowTest_SaveTensors:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"name": ("STRING", {"default": "tensors"})},
                "optional": {"images": ("IMAGE",), "latent": ("LATENT",)}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = "_for_testing"

    def save(self, name, images=None, latent=None):
        tensors = {}
        if images is not None:
            tensors["images"] = images.contiguous().cpu()
        if latent is not None:
            tensors["latent"] = latent["samples"].contiguous().cpu()
        path = os.path.join(folder_paths.get_output_directory(), f"{name}.safetensors")
        save_file(tensors, path)
        return {"ui": {"tensors": [{"filename": os.path.basename(path)}]}}


class PyramidFlowTest_FrameInfo:
    """Reports an IMAGE batch's shape and value range in the prompt's outputs, without writing a video file (the
    long-video tests check hundreds of frames, which an mp4 encoder would take minutes to write)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "report"
    CATEGORY = "_for_testing"

    def report(self, images):
        return {"ui": {"frame_info": [{"shape": list(images.shape), "min": float(images.min()),
                                       "max": float(images.max()), "finite": bool(images.isfinite().all())}]}}


NODE_CLASS_MAPPINGS = {
    "PyramidFlowTest_TinyDualCLIPLoader": PyramidFlowTest_TinyDualCLIPLoader,
    "PyramidFlowTest_TinyTripleCLIPLoader": PyramidFlowTest_TinyTripleCLIPLoader,
    "PyramidFlowTest_SaveTensors": PyramidFlowTest_SaveTensors,
    "PyramidFlowTest_FrameInfo": PyramidFlowTest_FrameInfo,
}
