"""The pack's socket types and the keys it adds to ComfyUI's LATENT and CONDITIONING dicts."""

from comfy_api.v0_0_2 import io

# Sockets of the pack's own objects (ModelPatchers of the DiT, the VAE, the official text encoders): custom types,
# so they cannot be wired into core nodes that expect other models.
ModelSocket = io.Custom("PYRAMID_FLOW_VIDEO_MODEL")
VAESocket = io.Custom("PYRAMID_FLOW_VIDEO_VAE")
TextEncoderSocket = io.Custom("PYRAMID_FLOW_VIDEO_TEXT_ENCODER")

# LATENT: "samples" holds VAE-space latents [B, 16, T, h, w] (so core nodes such as SaveLatent work); the pack adds
VARIANT_KEY = "pyramid_flow_variant"  # the variant that made the latent (also on CONDITIONING)
NORMALIZED_KEY = "pyramid_flow_normalized"  # the sampler's normalised latents, for an exact continuation
MOMENTS_KEY = "pyramid_flow_moments"  # image-to-video: the image's VAE moments; the sampler draws the posterior
SEED_KEY = "pyramid_flow_seed"  # the seed a latent was sampled with, shown when extending with another one

# model_options of a DiT ModelPatcher: torch.compile kwargs set by 'Pyramid Flow Torch Compile', and the device
# that runs the positive CFG half (set by 'Pyramid Flow Multi-GPU'; the copy there is models.device_copy's).
COMPILE_OPTIONS_KEY = "pyramid_flow_compile"
CFG_DEVICE_KEY = "pyramid_flow_cfg_device"

# CONDITIONING entries of a prompt schedule carry the time from which they apply.
START_SECONDS_KEY = "pyramid_flow_start_seconds"
