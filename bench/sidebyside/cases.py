"""The side-by-side cases: what is built, with which shapes, and how it is called. Plain data (JSON-able).

Both side runners receive one case dict; the fixture writer (our venv) writes its weights and inputs. Model
configs use the official ``config.json`` keys, so the folders load with the official ``from_pretrained``.
"""

import copy
import hashlib
import json

# --- DiT configs -------------------------------------------------------------------------------------------------

# miniFLUX at the released width (30 heads x 64 = 1920, T5 4096, CLIP-L pooled 768), reduced depth: one double
# (joint) block and one single block, so that both block types are timed and a forward stays a few seconds.
FLUX_REAL_WIDTH = {
    "_class_name": "PyramidFluxTransformer", "attention_head_dim": 64, "axes_dims_rope": [16, 24, 24],
    "in_channels": 64, "interp_condition_pos": True, "joint_attention_dim": 4096, "num_attention_heads": 30,
    "num_layers": 1, "num_single_layers": 1, "patch_size": 1, "pooled_projection_dim": 768,
    "use_flash_attn": False, "use_gradient_checkpointing": False, "use_temporal_causal": True,
}
# SD3 MMDiT at the released width (24 heads x 64 = 1536), two joint blocks (a normal one and the
# context_pre_only last one, the minimum that has both).
SD3_REAL_WIDTH = {
    "_class_name": "PyramidDiffusionMMDiT", "attention_head_dim": 64, "caption_projection_dim": 1536,
    "in_channels": 16, "joint_attention_dim": 4096, "max_num_frames": 200, "num_attention_heads": 24,
    "num_layers": 2, "patch_size": 2, "pooled_projection_dim": 2048, "pos_embed_max_size": 192,
    "pos_embed_type": "sincos", "qk_norm": "rms_norm", "sample_size": 128, "use_flash_attn": False,
    "use_gradient_checkpointing": False, "use_temporal_causal": True,
}
# The small miniFLUX DiT of the whole-generate() cases: real head dim and RoPE axes, 4 heads (width 256),
# 2 double + 4 single blocks (as bench/dit_step.py); its text widths are those of the tiny text encoders of
# pyramid_flow.tiny (T5 d_model 32, CLIP-L hidden 32).
FLUX_SMALL = dict(FLUX_REAL_WIDTH, num_attention_heads=4, num_layers=2, num_single_layers=4,
                  joint_attention_dim=32, pooled_projection_dim=32)
# --quick: the smallest miniFLUX / SD3 DiTs that keep every block type.
FLUX_TINY = dict(FLUX_REAL_WIDTH, num_attention_heads=2, num_layers=1, num_single_layers=1,
                 joint_attention_dim=32, pooled_projection_dim=32)
SD3_TINY = dict(SD3_REAL_WIDTH, attention_head_dim=16, num_attention_heads=2, caption_projection_dim=32,
                num_layers=2, joint_attention_dim=32, pooled_projection_dim=32)

# --- VAE configs (decoder side matters; the encoder is built and loaded too, as both loaders do) ---------------

REAL_VAE = {"channels": [128, 256, 512, 512], "groups": 32}  # the released causal_video_vae
TINY_VAE = {"channels": [8, 16, 16, 16], "groups": 4}  # pyramid_flow.tiny's VAE (also the golden one)


def vae_config(channels, groups) -> dict:
    """The official causal_video_vae config.json with other block widths / group count."""
    flags = [True, True, True, False]
    return {
        "_class_name": "CausalVideoVAE", "add_post_quant_conv": True, "downsample_scale": 8, "interpolate": False,
        "sample_size": 256, "scaling_factor": 0.13025,
        "encoder_in_channels": 3, "encoder_out_channels": 16, "encoder_double_z": True,
        "encoder_layers_per_block": [2, 2, 2, 2], "encoder_block_out_channels": list(channels),
        "encoder_down_block_types": ["DownEncoderBlockCausal3D"] * 4, "encoder_spatial_down_sample": flags,
        "encoder_temporal_down_sample": flags, "encoder_norm_num_groups": groups, "encoder_act_fn": "silu",
        "encoder_block_dropout": [0.0] * 4, "encoder_type": "causal_vae_conv",
        "decoder_in_channels": 16, "decoder_out_channels": 3, "decoder_layers_per_block": [3, 3, 3, 3],
        "decoder_block_out_channels": list(channels), "decoder_up_block_types": ["UpDecoderBlockCausal3D"] * 4,
        "decoder_spatial_up_sample": flags, "decoder_temporal_up_sample": flags, "decoder_norm_num_groups": groups,
        "decoder_act_fn": "silu", "decoder_block_dropout": [0.0] * 4, "decoder_type": "causal_vae_conv",
    }


# --- cases -------------------------------------------------------------------------------------------------------

PROMPT = "A red panda walking across a snowy log, golden hour, cinematic"


def dit_case(name, variant, config, unit, width, height, what):
    """One DiT forward as the sampler calls it at stage 2 (full resolution) of ``unit`` (its history holds
    ``unit`` earlier frames, reference §4.4), CFG batch 2, T5 mask with real padding."""
    return {"name": name, "kind": "dit", "variant": variant, "config": config, "unit": unit,
            "width": width, "height": height, "timestep": 666.0, "what": what}


def vae_case(name, vae, latent, window, tile, what):
    """vae.decode(z, temporal_chunk=True, window_size=window, tile_sample_min_size=tile) of a random latent."""
    return {"name": name, "kind": "vae", "vae": vae, "latent": latent, "window": window, "tile": tile, "what": what}


def generate_case(name, dit, width, height, temp, steps, video_steps, what):
    """Whole text-to-video generate() (tiny text encoders, ``dit``, tiny VAE), save_memory decode, CFG on,
    the official random stream for seed 1 on both sides."""
    return {"name": name, "kind": "generate", "dit": dit, "vae": TINY_VAE, "width": width, "height": height,
            "temp": temp, "steps": steps, "video_steps": video_steps, "guidance": 7.0, "video_guidance": 5.0,
            "seed": 1, "prompt": PROMPT, "what": what}


FULL_CASES = [
    dit_case("dit_flux_u2", "miniflux", FLUX_REAL_WIDTH, 2, 640, 384,
             "miniFLUX forward, width 1920, 1 double + 1 single block, 640x384 stage 2 of unit 2"),
    dit_case("dit_flux_u15", "miniflux", FLUX_REAL_WIDTH, 15, 640, 384,
             "miniFLUX forward, width 1920, 1 double + 1 single block, 640x384 stage 2 of unit 15"),
    dit_case("dit_sd3_u2", "sd3", SD3_REAL_WIDTH, 2, 640, 384,
             "SD3 forward, width 1536, 2 joint blocks, 640x384 stage 2 of unit 2"),
    dit_case("dit_sd3_u15", "sd3", SD3_REAL_WIDTH, 15, 640, 384,
             "SD3 forward, width 1536, 2 joint blocks, 640x384 stage 2 of unit 15"),
    vae_case("vae_tile", REAL_VAE, [1, 16, 1, 32, 32], 1, 256,
             "real-width VAE decode of one save_memory tile of one frame (an image): latent [1,16,1,32,32] -> 256x256"),
    vae_case("vae_clip", REAL_VAE, [1, 16, 3, 16, 16], 1, 256,
             "real-width VAE decode of a short clip in one tile: latent [1,16,3,16,16] -> 17 frames 128x128 "
             "(a first chunk of 2 latent frames, then 1 from the causal cache)"),
    vae_case("vae_tiny", TINY_VAE, [1, 16, 2, 48, 80], 1, 256,
             "tiny VAE decode [1,16,2,48,80] -> 9 frames 640x384 (8 tiles of 256 px, window 1)"),
    generate_case("gen_t2", FLUX_SMALL, 640, 384, 2, [10, 10, 10], [5, 5, 5],
                  "generate() 640x384 temp 2: 45 DiT calls + decode of 9 frames"),
    generate_case("gen_t3", FLUX_SMALL, 640, 384, 3, [10, 10, 10], [5, 5, 5],
                  "generate() 640x384 temp 3: 60 DiT calls + decode of 17 frames"),
]

QUICK_CASES = [
    dit_case("dit_flux_u2", "miniflux", FLUX_TINY, 2, 128, 128, "tiny miniFLUX forward, 128x128 unit 2"),
    dit_case("dit_flux_u15", "miniflux", FLUX_TINY, 15, 128, 128, "tiny miniFLUX forward, 128x128 unit 15"),
    dit_case("dit_sd3_u2", "sd3", SD3_TINY, 2, 128, 128, "tiny SD3 forward, 128x128 unit 2"),
    dit_case("dit_sd3_u15", "sd3", SD3_TINY, 15, 128, 128, "tiny SD3 forward, 128x128 unit 15"),
    vae_case("vae_tile", TINY_VAE, [1, 16, 1, 8, 8], 1, 64, "tiny VAE decode of one 64-px tile"),
    vae_case("vae_tiny", TINY_VAE, [1, 16, 3, 8, 16], 1, 64, "tiny VAE decode [1,16,3,8,16], 3 tiles of 64 px"),
    vae_case("vae_clip", TINY_VAE, [1, 16, 3, 8, 8], 1, 64, "tiny VAE decode [1,16,3,8,8], one 64-px tile"),
    generate_case("gen_t2", FLUX_TINY, 320, 64, 2, [1, 1, 1], [1, 1, 1], "generate() 320x64 temp 2, 1 step/stage"),
    generate_case("gen_t3", FLUX_TINY, 320, 64, 3, [1, 1, 1], [1, 1, 1], "generate() 320x64 temp 3, 1 step/stage"),
]
# What --quick runs without --cases: one case of each code path (each case costs two interpreter starts).
QUICK_DEFAULT = ["dit_flux_u15", "dit_sd3_u15", "vae_tiny", "gen_t3"]


def cases(quick: bool, names=None):
    """The cases to run: ``names`` (all when None) of the full or the --quick set."""
    pool = QUICK_CASES if quick else FULL_CASES
    if names is None:
        names = QUICK_DEFAULT if quick else [c["name"] for c in pool]
    unknown = set(names) - {c["name"] for c in pool}
    if unknown:
        raise ValueError(f"unknown cases {sorted(unknown)}; known: {[c['name'] for c in pool]}")
    return copy.deepcopy([c for c in pool if c["name"] in names])


def key(obj) -> str:
    """A short stable name for a model config (weights folders are shared between cases with equal configs)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def dit_folder(case) -> str:
    return f"dit_{case['variant']}_{key(case['config'])}"


def vae_folder(vae) -> str:
    return f"vae_{key(vae)}"


def generate_root(case) -> str:
    return f"pipeline_{key([case['dit'], case['vae']])}"


DIT_SUBFOLDER = "diffusion_transformer_384p"  # the DiT folder name of the generate() checkpoints
