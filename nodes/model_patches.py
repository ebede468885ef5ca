"""Model patch nodes: torch.compile of the DiT blocks (core's TorchCompileModel takes only core MODELs)."""

from comfy_api.v0_0_2 import io

from ..pyramid_flow.dit.compile import COMPILE_BACKENDS, COMPILE_MODES
from .base import PyramidFlowNode
from .types import COMPILE_OPTIONS_KEY, ModelSocket

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


NODES = [PyramidFlowVideoTorchCompile]
