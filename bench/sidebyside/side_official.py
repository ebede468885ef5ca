"""Side runner for the OFFICIAL Pyramid Flow code (run with the official venv's python).

usage (by bench/vs_official.py, from the repository root): <official python> -m bench.sidebyside.side_official
--official <checkout> [--tv-stub <dir>]

Imports the official modules from the given checkout at run time; nothing official is copied here. The
official VAE is used with enable_tiling(), as the official app and inference scripts do.
"""

import argparse
import os
import sys

import numpy as np

import torch

from . import protocol
from .protocol import DecodeTimer, Runner, serve

def use_torch212_block_factor(factor: torch.Tensor) -> None:
    """MultivariateNormal gets ``factor`` for the block-noise covariance (gamma 1/3): the float32 Cholesky factor
    that torch 2.1.2, the official pin, computes (pyramid_flow.noise.OFFICIAL_BLOCK_FACTOR, written by the
    fixtures); newer LAPACK builds fail on this singular matrix or return another last entry. Both sides then draw
    the same block noise from the same stream."""
    import torch.distributions.multivariate_normal as mvn

    base = mvn.MultivariateNormal
    if getattr(base, "_bench_patched", False):
        return
    gamma = 1 / 3
    covariance = torch.eye(4) * (1 + gamma) - torch.ones(4, 4) * gamma

    class BlockNoiseMVN(base):
        _bench_patched = True

        def __init__(self, loc, covariance_matrix=None, precision_matrix=None, scale_tril=None, validate_args=None):
            if covariance_matrix is not None and covariance_matrix.shape == (4, 4) \
                    and torch.equal(covariance_matrix, covariance):
                super().__init__(loc, scale_tril=factor, validate_args=validate_args)
            else:
                super().__init__(loc, covariance_matrix, precision_matrix, scale_tril, validate_args)

    mvn.MultivariateNormal = BlockNoiseMVN


class DiTRunner(Runner):
    def __init__(self, case, paths):
        from pyramid_dit.pyramid_dit_for_video_gen_pipeline import build_pyramid_dit

        name = {"miniflux": "pyramid_flux", "sd3": "pyramid_mmdit"}[case["variant"]]
        self.model = build_pyramid_dit(name, paths["weights"], torch.float32, use_flash_attn=False,
                                       use_mixed_training=False)
        self.model.eval()
        self.inputs = torch.load(paths["inputs"])

    def call(self):
        i = self.inputs
        return self.model(sample=[list(i["clips"])], encoder_hidden_states=i["context"],
                          encoder_attention_mask=i["mask"], pooled_projections=i["pooled"],
                          timestep_ratio=i["timestep"])[0]

    def tensors(self, output):
        return {"output": output}


class VAERunner(Runner):
    def __init__(self, case, paths):
        from video_vae.modeling_causal_vae import CausalVideoVAE

        self.vae = CausalVideoVAE.from_pretrained(paths["weights"], torch_dtype=torch.float32, interpolate=False)
        self.vae.enable_tiling()
        self.vae.eval()
        self.z = torch.load(paths["inputs"])["z"]
        self.case = case

    def call(self):
        return self.vae.decode(self.z, temporal_chunk=True, window_size=self.case["window"],
                               tile_sample_min_size=self.case["tile"]).sample

    def tensors(self, output):
        return {"output": output}


class GenerateRunner(protocol.GenerateRunner):
    """PyramidDiTForVideoGeneration.generate() (output_type 'pil', save_memory) after torch.manual_seed(seed),
    as the official app; vae.decode is wrapped to time it and keep the latents it receives."""

    def __init__(self, case, paths):
        from pyramid_dit.pyramid_dit_for_video_gen_pipeline import PyramidDiTForVideoGeneration

        use_torch212_block_factor(torch.load(paths["block_factor"]))
        self.case = case
        self.pipe = PyramidDiTForVideoGeneration(paths["weights"], model_dtype="fp32", model_name="pyramid_flux",
                                                 model_variant="diffusion_transformer_384p")
        self.pipe.vae.enable_tiling()
        self.decoder = self.pipe.vae.decode = DecodeTimer(self.pipe.vae.decode)

    def call(self):
        c = self.case
        torch.manual_seed(c["seed"])
        return self.pipe.generate(prompt=c["prompt"], height=c["height"], width=c["width"], temp=c["temp"],
                                  num_inference_steps=c["steps"], video_num_inference_steps=c["video_steps"],
                                  guidance_scale=c["guidance"], video_guidance_scale=c["video_guidance"],
                                  output_type="pil", save_memory=True)

    def tensors(self, output):
        frames = torch.from_numpy(np.stack([np.asarray(image) for image in output]))
        return {"frames": frames, "latents": self.decoder.z}



RUNNERS = {"dit": DiTRunner, "vae": VAERunner, "generate": GenerateRunner}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--official", required=True, help="a checkout of jy0205/Pyramid-Flow")
    parser.add_argument("--tv-stub", default=None, help="folder of tv_stub.py (torchvision stand-in), if needed")
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.official))
    if args.tv_stub:
        sys.path.insert(0, os.path.abspath(args.tv_stub))
        import tv_stub

        tv_stub.install()
    serve(RUNNERS)


if __name__ == "__main__":
    main()
