"""The README's VRAM table, from the memory model (pyramid_flow/memory.py): predicted, not measured on a GPU.

For each variant and workflow, with bf16 or fp8 weights:
- sampling peak: DiT weights + the activations of the largest DiT call (the last unit's last stage, CFG batch 2,
  computed in bf16);
- decode peak: VAE weights (bf16) + the save_memory decode (tile 256, window 1), the video assembled off the GPU
  (the decode node and the CLI do);
- with offload (ComfyUI's default, the CLI's default): one model on the GPU at a time, so the card needs the
  largest of text encoding, sampling and decoding;
- without offload: every model resident (text encoders, DiT, VAE) plus the largest activations.
fp8 stores the DiT's Linear weights and T5-XXL in fp8 (``t5xxl_fp8_e4m3fn``); the rest stays bf16.

Not included: the CUDA context (~0.3-0.5 GiB), the caching allocator's slack, the text encoders' activations
(a few MB for 128 tokens) and what the decode node does with the frames afterwards.

Run: .venv/bin/python -m bench.vram_table
"""

from typing import Dict, Optional, Tuple

import torch

from pyramid_flow.dit import DIT_CLASSES
from pyramid_flow.dit.loading import target_dtype
from pyramid_flow.latents import SPATIAL_SCALE, LATENT_CHANNELS, latent_frames_for_seconds
from pyramid_flow.memory import dit_memory_estimate, vae_decode_memory
from pyramid_flow.vae import SAVE_MEMORY_DECODE, CausalVideoVAE
from pyramid_flow.variants import get_variant

GIB = 2 ** 30
FP8 = torch.float8_e4m3fn
# Text encoder weights in bytes: T5-XXL encoder (4.76 B parameters; ComfyUI's fp8 file keeps a few tensors in
# bf16), CLIP-L (123 M), CLIP-G (695 M).
T5_BYTES = {"bf16": 9.52e9, "fp8": 4.89e9}
CLIP_BYTES = {"miniflux": 0.25e9, "sd3": 0.25e9 + 1.39e9}
# (label, height, width, seconds, history window)
WORKFLOWS = [("384p 5 s", 384, 640, 5, None), ("768p 10 s", 768, 1280, 10, None),
             ("768p 20 s, history_window 16", 768, 1280, 20, 16)]


def dit_weight_bytes(variant: str) -> Dict[str, int]:
    """Bytes of the official DiT's weights stored in bf16 and in fp8 (Linear weights only, as the loader does)."""
    dit = DIT_CLASSES[variant](device="meta")
    sizes = {"bf16": 0, "fp8": 0}
    for key, tensor in dit.state_dict().items():
        sizes["bf16"] += tensor.numel() * 2
        sizes["fp8"] += tensor.numel() * target_dtype(key, tensor, FP8).itemsize
    return sizes


def vae_weight_bytes() -> int:
    return sum(t.numel() * 2 for t in CausalVideoVAE(device="meta").state_dict().values())


def workflow_row(variant: str, weights: str, dit_bytes: int, vae_bytes: int,
                 workflow: Tuple[str, int, int, int, Optional[int]]) -> str:
    label, height, width, seconds, window = workflow
    temp = latent_frames_for_seconds(seconds)
    activations = dit_memory_estimate(variant, {}, height, width, temp - 1, 2, torch.bfloat16, window)
    latent = (1, LATENT_CHANNELS, temp, height // SPATIAL_SCALE, width // SPATIAL_SCALE)
    decode = vae_decode_memory(latent, SAVE_MEMORY_DECODE.window_size, SAVE_MEMORY_DECODE.tile_sample_min_size,
                               output_on_device=False)  # the decode node and the CLI assemble the video off the GPU
    text = T5_BYTES[weights] + CLIP_BYTES[variant]
    sampling, decoding = dit_bytes + activations, vae_bytes + decode
    offload = max(text, sampling, decoding)
    resident = text + dit_bytes + vae_bytes + max(activations, decode)
    cells = [dit_bytes, sampling, decoding, offload, resident]
    return f"| {get_variant(variant).display_name} {label} ({temp} latent frames) | {weights} | " + " | ".join(
        f"{size / GIB:.1f}" for size in cells) + " |"


def main() -> None:
    print("Predicted (memory model), not measured on a GPU. GiB; batch 2 (CFG), bf16 compute.\n")
    print("| Workflow | Weights | DiT weights | Sampling peak | Decode peak (tile 256, window 1) | "
          "Card with offload | Card without offload |")
    print("|---|---|---:|---:|---:|---:|---:|")
    vae_bytes = vae_weight_bytes()
    for variant in ("miniflux", "sd3"):
        dit_bytes = dit_weight_bytes(variant)
        for workflow in WORKFLOWS:
            for weights in ("bf16", "fp8"):
                print(workflow_row(variant, weights, dit_bytes[weights], vae_bytes, workflow))


if __name__ == "__main__":
    main()
