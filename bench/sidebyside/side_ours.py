"""Side runner for THIS project (run with the project's venv python as ``-m bench.sidebyside.side_ours`` from the
repository root). See protocol.py for the commands."""

import warnings

import torch

from . import protocol
from .protocol import DecodeTimer, Runner, serve


class DiTRunner(Runner):
    def __init__(self, case, paths):
        from pyramid_flow.dit import load_dit

        self.model, _ = load_dit(paths["weights"], dtype=torch.float32)
        self.model.eval()
        self.inputs = torch.load(paths["inputs"])

    def call(self):
        i = self.inputs
        return self.model(i["clips"], i["context"], i["mask"], i["pooled"], i["timestep"])

    def tensors(self, output):
        return {"output": output}


class VAERunner(Runner):
    def __init__(self, case, paths):
        from pyramid_flow.vae import load_vae

        self.vae = load_vae(paths["weights"], dtype=torch.float32).eval()
        self.z = torch.load(paths["inputs"])["z"]
        self.case = case

    def call(self):
        return self.vae.decode(self.z, temporal_chunk=True, window_size=self.case["window"],
                               tile_sample_min_size=self.case["tile"])

    def tensors(self, output):
        return {"output": output}


class GenerateRunner(protocol.GenerateRunner):
    """PyramidFlowPipeline.generate() with the official random stream; vae.decode is wrapped to time it and to
    keep the (denormalised) latents it receives."""

    def __init__(self, case, paths):
        from pyramid_flow.pipeline import PyramidFlowPipeline

        warnings.filterwarnings("ignore", message=".*trained resolution.*")
        self.case = case
        self.pipe = PyramidFlowPipeline.from_pretrained(paths["weights"], dit_folder="diffusion_transformer_384p",
                                                        device="cpu", dtype=torch.float32)
        self.decoder = self.pipe.vae.decode = DecodeTimer(self.pipe.vae.decode)

    def call(self):
        c = self.case
        return self.pipe.generate(c["prompt"], height=c["height"], width=c["width"], temp=c["temp"],
                                  num_inference_steps=c["steps"], video_num_inference_steps=c["video_steps"],
                                  guidance_scale=c["guidance"], video_guidance_scale=c["video_guidance"],
                                  seed=c["seed"], noise="official", save_memory=True)

    def tensors(self, output):
        return {"frames": output, "latents": self.decoder.z}



RUNNERS = {"dit": DiTRunner, "vae": VAERunner, "generate": GenerateRunner}


if __name__ == "__main__":
    serve(RUNNERS)
