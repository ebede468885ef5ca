"""The pack's V3 extension: every node module's ``NODES``, registered through ``comfy_entrypoint``."""

from typing import List, Type

from comfy_api.v0_0_2 import ComfyExtension, io

from . import conditioning, latent, loaders, model_patches, sampling
from .models import register_folders

NODES: List[Type[io.ComfyNode]] = [*loaders.NODES, *model_patches.NODES, *conditioning.NODES, *sampling.NODES,
                                    *latent.NODES]


class PyramidFlowExtension(ComfyExtension):
    async def get_node_list(self) -> List[Type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> PyramidFlowExtension:
    register_folders()
    return PyramidFlowExtension()
