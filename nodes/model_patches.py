"""Model patch nodes: torch.compile of the DiT blocks and the CFG halves on two GPUs (core's TorchCompileModel
and MultiGPU CFG Split take only core MODELs)."""

import logging

import torch

from comfy_api.v0_0_2 import io

from ..pyramid_flow.dit.compile import COMPILE_BACKENDS, COMPILE_MODES
from . import devices, models
from .base import PyramidFlowNode
from .types import CFG_DEVICE_KEY, COMPILE_OPTIONS_KEY, ModelSocket

log = logging.getLogger("pyramid_flow")

CATEGORY = "PyramidFlow/model"


class PyramidFlowVideoTorchCompile(PyramidFlowNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowVideoTorchCompile",
            display_name="Pyramid Flow Torch Compile",
            category=CATEGORY,
            description=("Compile the DiT's transformer blocks with torch.compile for the sampler and extension. "
                         "The first run compiles (minutes on first use, once per new size); later runs are faster. "
                         "Outputs match the uncompiled model within float rounding."),
            inputs=[
                ModelSocket.Input("model", tooltip="From 'Pyramid Flow Model Loader'."),
                io.Combo.Input("backend", options=list(COMPILE_BACKENDS), default="inductor", tooltip=(
                    "inductor: generated kernels (needs a C++ compiler on CPU, Triton on GPU). cudagraphs: CUDA "
                    "graphs only. aot_eager: traces without generating code (for checking a setup).")),
                io.Combo.Input("mode", options=list(COMPILE_MODES), default="default", tooltip=(
                    "default: fast compile. max-autotune: slower compile, tuned kernels. reduce-overhead: CUDA "
                    "graphs (more VRAM).")),
                io.Boolean.Input("dynamic", default=False, tooltip=(
                    "Compile for any sequence length at once instead of once per length (each pyramid stage and "
                    "history length is a new length; torch marks them dynamic after the second by itself).")),
            ],
            outputs=[ModelSocket.Output(display_name="model", tooltip="The same DiT, compiled when it samples.")],
        )

    @classmethod
    def validate_inputs(cls, backend: str, mode: str):
        return cls.check_combos(backend=backend, mode=mode)

    @classmethod
    def process(cls, model, backend: str, mode: str, dynamic: bool) -> io.NodeOutput:
        patched = model.clone()
        patched.model_options[COMPILE_OPTIONS_KEY] = {"backend": backend, "mode": mode, "dynamic": dynamic or None}
        return io.NodeOutput(patched)


class PyramidFlowVideoMultiGPU(PyramidFlowNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowVideoMultiGPU",
            display_name="Pyramid Flow Multi-GPU",
            category=CATEGORY,
            description=("Run the two halves of classifier-free guidance of every Sampler and Extend step on two "
                         "GPUs at once, each at batch 1: about 2x per step. A copy of the DiT loads on the second "
                         "GPU, managed by ComfyUI like the first. With one GPU it changes nothing and says so in the "
                         "log. Place it after 'Pyramid Flow Torch Compile'."),
            inputs=[
                ModelSocket.Input("model", tooltip="From 'Pyramid Flow Model Loader'."),
                io.Int.Input("max_gpus", default=2, min=1, max=16, tooltip=(
                    "Devices to use, the model's own included. Guidance has two halves, so a sampling step uses at "
                    "most 2; 1 turns this off.")),
            ],
            outputs=[ModelSocket.Output(display_name="model", tooltip=(
                "The same DiT, with its positive CFG half on a second device."))],
        )

    @classmethod
    def process(cls, model, max_gpus: int) -> io.NodeOutput:
        others = [torch.device(name) for name in devices.machine_devices()
                  if name != "cpu" and torch.device(name) != torch.device(model.load_device)]
        if max_gpus < 2 or not others:
            log.info("Pyramid Flow Multi-GPU: %s: the model runs on %s alone, as without this node.",
                     "max_gpus is 1" if max_gpus < 2 else "this machine has no second GPU", model.load_device)
            return io.NodeOutput(model)
        second = others[0]
        models.device_copy(model, second)  # loaded from disk now, so a bad file fails here
        log.info("Pyramid Flow Multi-GPU: the positive CFG half of every step runs on %s, the negative on %s.",
                 second, model.load_device)
        patched = model.clone()
        patched.model_options[CFG_DEVICE_KEY] = str(second)
        return io.NodeOutput(patched)


NODES = [PyramidFlowVideoTorchCompile, PyramidFlowVideoMultiGPU]
