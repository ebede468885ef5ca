"""API-format prompts for the integration lane (tiny sizes and step counts so CPU runs take seconds)."""

TINY = dict(width=128, height=128, duration_seconds=0.375,  # 0.375 s -> 2 latent frames -> 9 frames
            first_frame_steps_1=2, first_frame_steps_2=2, first_frame_steps_3=2,
            video_steps_1=1, video_steps_2=1, video_steps_3=1,
            guidance_scale=7.0, video_guidance_scale=5.0, seed=42)
PROMPT = "a red fox running through snow"
NEGATIVE = "blurry"


def text_nodes(variant: str, text_source: str, text_folder: str = None):
    """Nodes '1' (encoders) and '2' (text encode). text_source: 'clip' (tiny core CLIP) or 'transformers' (from
    ``text_folder`` under models/pyramidflow/, default the variant's repository)."""
    repo = f"pyramid-flow-{variant}"
    if text_source == "transformers":
        loader = {"class_type": "PyramidFlowVideoTextEncoderLoader",
                  "inputs": {"model_folder": text_folder or repo, "dtype": "fp32", "download_if_missing": False}}
        link = "text_encoder"
    elif variant == "miniflux":
        loader = {"class_type": "PyramidFlowTest_TinyDualCLIPLoader",
                  "inputs": {"clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl_fp16.safetensors", "type": "flux"}}
        link = "clip"
    else:
        loader = {"class_type": "PyramidFlowTest_TinyTripleCLIPLoader",
                  "inputs": {"clip_name1": "clip_l.safetensors", "clip_name2": "clip_g.safetensors",
                             "clip_name3": "t5xxl_fp16.safetensors"}}
        link = "clip"
    encode = {"class_type": "PyramidFlowVideoTextEncode",
              "inputs": {"prompt": PROMPT, "negative_prompt": NEGATIVE, "add_quality_suffix": True, link: ["1", 0]}}
    return {"1": loader, "2": encode}


def video_prompt(variant="miniflux", text_source="clip", prefix="pf_t2v", i2v=False, save_tensors=None,
                 weight_dtype="fp32", dit=None, text_folder=None, **overrides):
    repo = f"pyramid-flow-{variant}"
    sampler_inputs = dict(TINY, model=["3", 0], positive=["2", 0], negative=["2", 1])
    sampler_inputs.update(overrides)
    prompt = text_nodes(variant, text_source, text_folder)
    prompt.update({
        "3": {"class_type": "PyramidFlowVideoModelLoader",
              "inputs": {"model": dit or f"{repo}/diffusion_transformer_384p", "weight_dtype": weight_dtype,
                         "download_if_missing": False}},
        "4": {"class_type": "PyramidFlowVideoVAELoader",
              "inputs": {"vae": f"{repo}/causal_video_vae", "dtype": "fp32", "download_if_missing": False}},
        "5": {"class_type": "PyramidFlowVideoSampler", "inputs": sampler_inputs},
        "6": {"class_type": "PyramidFlowVideoVAEDecode",
              "inputs": {"vae": ["4", 0], "samples": ["5", 0], "tile_size": 256, "tile_overlap": 0.25,
                         "temporal_window": 1}},
        "7": {"class_type": "CreateVideo", "inputs": {"images": ["6", 0], "fps": 24.0}},
        "8": {"class_type": "SaveVideo",
              "inputs": {"video": ["7", 0], "filename_prefix": f"video/{prefix}", "format": "auto", "codec": "auto"}},
    })
    if i2v:
        prompt["9"] = {"class_type": "LoadImage", "inputs": {"image": "pyramid_flow_example.png"}}
        prompt["10"] = {"class_type": "PyramidFlowVideoImageToVideo",
                        "inputs": {"vae": ["4", 0], "image": ["9", 0], "width": sampler_inputs["width"],
                                   "height": sampler_inputs["height"], "resize_mode": "crop"}}
        sampler_inputs["image_latent"] = ["10", 0]
    if save_tensors:
        prompt["11"] = {"class_type": "PyramidFlowTest_SaveTensors",
                        "inputs": {"name": save_tensors, "images": ["6", 0], "latent": ["5", 0]}}
    return prompt
