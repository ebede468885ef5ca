"""Conditioning nodes: prompts (one, or a timed schedule for prompt travel) and the first frame of image-to-video.

Text comes from either source of encoders:
- ComfyUI's own CLIP object (DualCLIPLoader type flux: clip_l + t5xxl for miniFLUX; TripleCLIPLoader: clip_l +
  clip_g + t5xxl for SD3), so the files users already have are reused;
- the official transformers encoders (Pyramid Flow Text Encoder Loader).

Either way the result is T5 hidden states cut/padded to 128 tokens with their mask, and the pooled CLIP vector
(miniFLUX: CLIP-L un-projected 768; SD3: CLIP-L and CLIP-G projected, 2048).
"""

import torch

import comfy.model_management as mm
from comfy_api.v0_0_2 import io

from ..pyramid_flow.image import RESIZE_MODES
from ..pyramid_flow.latents import RESOLUTION_MULTIPLE
from ..pyramid_flow.orchestration import encode_first_frame, encode_prompts
from ..pyramid_flow.text import DEFAULT_NEGATIVE_PROMPT, PROMPT_SUFFIX
from . import runtime
from .base import PyramidFlowNode
from .common import MAX_SIZE, check_image, check_size
from .types import MOMENTS_KEY, START_SECONDS_KEY, TextEncoderSocket, VAESocket

CATEGORY = "PyramidFlow/conditioning"


def _text_inputs(prompt: io.Input) -> list:
    return [
        prompt,
        io.String.Input("negative_prompt", multiline=True, dynamic_prompts=True, default=DEFAULT_NEGATIVE_PROMPT,
                        tooltip="What to steer away from (used when guidance > 0). The default is the official "
                                "pipeline's; an empty box encodes the empty string."),
        io.Boolean.Input("add_quality_suffix", default=True,
                         tooltip=f"Append '{PROMPT_SUFFIX}' to the prompt, as the official pipeline always does."),
        io.Clip.Input("clip", optional=True, tooltip=(
            "ComfyUI text encoders: DualCLIPLoader type flux (clip_l + t5xxl) for miniFLUX, TripleCLIPLoader (clip_l "
            "+ clip_g + t5xxl) for SD3. Never modified.")),
        TextEncoderSocket.Input("text_encoder", optional=True, tooltip=(
            "Or the official encoders from 'Pyramid Flow Text Encoder Loader'. Connect exactly one of clip / "
            "text_encoder.")),
    ]


_TEXT_OUTPUTS = [io.Conditioning.Output(display_name="positive", tooltip="Prompt conditioning for the Pyramid Flow Sampler."),
                 io.Conditioning.Output(display_name="negative", tooltip="Negative prompt conditioning.")]


class PyramidFlowVideoTextEncode(PyramidFlowNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowVideoTextEncode",
            display_name="Pyramid Flow Text Encode",
            category=CATEGORY,
            description=("Encode a prompt and a negative prompt for Pyramid Flow: T5 cut/padded to 128 tokens with its "
                         "mask, plus the pooled CLIP vector of the variant."),
            inputs=_text_inputs(io.String.Input("prompt", multiline=True, dynamic_prompts=True, tooltip=(
                "What the video shows. T5 reads at most 128 tokens (the rest is cut, as in the official pipeline); "
                "CLIP reads the first 77."))),
            outputs=_TEXT_OUTPUTS,
        )

    @classmethod
    def process(cls, prompt: str, negative_prompt: str, add_quality_suffix: bool = True, clip=None,
                text_encoder=None) -> io.NodeOutput:
        variant, encode = runtime.text_encoder_for(clip, text_encoder)
        ((_, positive),), negative = encode_prompts(encode, prompt, negative_prompt, add_suffix=add_quality_suffix)
        return io.NodeOutput(runtime.to_conditioning(positive, variant), runtime.to_conditioning(negative, variant))


class PyramidFlowVideoPromptSchedule(PyramidFlowNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowVideoPromptSchedule",
            display_name="Pyramid Flow Prompt Schedule",
            category=CATEGORY,
            description=("Prompt travel: timed prompts for one video ('0: a red panda on a log / 4: the panda jumps "
                         "into the snow'). The conditioning switches at the latent frame (1/3 s) holding each time; "
                         "each distinct prompt is encoded once; the negative prompt stays one."),
            inputs=_text_inputs(io.String.Input("schedule", multiline=True, dynamic_prompts=True,
                                                default="0: a red panda on a log\n4: the red panda jumps into the snow",
                                                tooltip=(
                "'<seconds>: <prompt>' entries, one per line or separated by ' / ', the first at 0. Seconds count "
                "from the start of the whole video (also when extending one)."))),
            outputs=_TEXT_OUTPUTS,
        )

    @classmethod
    def process(cls, schedule: str, negative_prompt: str, add_quality_suffix: bool = True, clip=None,
                text_encoder=None) -> io.NodeOutput:
        variant, encode = runtime.text_encoder_for(clip, text_encoder)
        timed, negative = encode_prompts(encode, None, negative_prompt, schedule, add_quality_suffix)
        positive = [runtime.to_conditioning(embeddings, variant, **{START_SECONDS_KEY: seconds})[0]
                    for seconds, embeddings in timed]
        return io.NodeOutput(positive, runtime.to_conditioning(negative, variant))


class PyramidFlowVideoImageToVideo(PyramidFlowNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowVideoImageToVideo",
            display_name="Pyramid Flow Image To Video",
            category=CATEGORY,
            description="Resize an image to the video size (aspect preserved) and encode it as the first frame.",
            inputs=[
                VAESocket.Input("vae", tooltip="From 'Pyramid Flow VAE Loader'."),
                io.Image.Input("image", tooltip="The first frame. Only the first image of a batch is used."),
                io.Int.Input("width", default=640, min=RESOLUTION_MULTIPLE, max=MAX_SIZE, step=RESOLUTION_MULTIPLE,
                             tooltip="Video width (multiple of 64): 640 for 384p, 1280 for 768p checkpoints."),
                io.Int.Input("height", default=384, min=RESOLUTION_MULTIPLE, max=MAX_SIZE, step=RESOLUTION_MULTIPLE,
                             tooltip="Video height (multiple of 64): 384 for 384p, 768 for 768p."),
                io.Combo.Input("resize_mode", options=list(RESIZE_MODES), default="crop", tooltip=(
                    "Keep the aspect ratio: 'crop' fills the frame and centre-crops (official), 'pad' fits the whole "
                    "image and adds black bars. Never squashes.")),
            ],
            outputs=[io.Latent.Output(display_name="image_latent",
                                      tooltip="First-frame latent for the sampler's image_latent input.")],
        )

    @classmethod
    def validate_inputs(cls, resize_mode: str):
        return cls.check_combos(resize_mode=resize_mode)

    @classmethod
    def process(cls, vae, image: torch.Tensor, width: int, height: int, resize_mode: str) -> io.NodeOutput:
        check_image(image, "image")
        check_size(width, height)
        moments = encode_first_frame(runtime.vae_placement(vae), image[0], (width, height), resize_mode,
                                     runtime.vae_progress())
        moments = moments.float().to(mm.intermediate_device())
        return io.NodeOutput({"samples": moments[:, : moments.shape[1] // 2].clone(), MOMENTS_KEY: moments})


NODES = [PyramidFlowVideoTextEncode, PyramidFlowVideoPromptSchedule, PyramidFlowVideoImageToVideo]
