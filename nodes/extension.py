"""The pack's V3 extension: every node module's ``NODES``, registered through ``comfy_entrypoint``."""

from typing import List, Type

from comfy_api.v0_0_2 import ComfyExtension, io

from . import conditioning, latent, loaders, model_patches, sampling
from ..pyramid_flow.ops import bound_onednn_caches
from .models import register_folders

NODES: List[Type[io.ComfyNode]] = [*loaders.NODES, *model_patches.NODES, *conditioning.NODES, *sampling.NODES,
                                    *latent.NODES]


class PyramidFlowExtension(ComfyExtension):
    async def get_node_list(self) -> List[Type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> PyramidFlowExtension:
    bound_onednn_caches()  # a deliberate process setting (pyramid_flow/ops.py); the user's own values win
    register_folders()
    return PyramidFlowExtension()
