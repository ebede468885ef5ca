"""Pyramid Flow video generation for ComfyUI (classic V1 nodes).

ComfyUI imports this file as the pack's package; ``pyramid_flow/`` (the model code, no ComfyUI imports) and
``nodes/`` (the ComfyUI face) are its subpackages. Importing does no network access and installs nothing.
"""

try:
    import comfy.model_management  # noqa: F401  (always importable when ComfyUI loads the pack)
except ImportError:  # imported outside ComfyUI (e.g. pytest collecting the repository as a package): no nodes
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}
else:
    from .nodes.loaders import PyramidFlowVideoModelLoader, PyramidFlowVideoTextEncoderLoader, PyramidFlowVideoVAELoader
    from .nodes.models import register_folders
    from .nodes.sampler import PyramidFlowVideoImageToVideo, PyramidFlowVideoSampler
    from .nodes.text import PyramidFlowVideoTextEncode
    from .nodes.vae import PyramidFlowVideoVAEDecode, PyramidFlowVideoVAEEncode

    register_folders()

    NODE_CLASS_MAPPINGS = {
        "PyramidFlowVideoModelLoader": PyramidFlowVideoModelLoader,
        "PyramidFlowVideoVAELoader": PyramidFlowVideoVAELoader,
        "PyramidFlowVideoTextEncoderLoader": PyramidFlowVideoTextEncoderLoader,
        "PyramidFlowVideoTextEncode": PyramidFlowVideoTextEncode,
        "PyramidFlowVideoImageToVideo": PyramidFlowVideoImageToVideo,
        "PyramidFlowVideoSampler": PyramidFlowVideoSampler,
        "PyramidFlowVideoVAEDecode": PyramidFlowVideoVAEDecode,
        "PyramidFlowVideoVAEEncode": PyramidFlowVideoVAEEncode,
    }

    NODE_DISPLAY_NAME_MAPPINGS = {
        "PyramidFlowVideoModelLoader": "Pyramid Flow Model Loader",
        "PyramidFlowVideoVAELoader": "Pyramid Flow VAE Loader",
        "PyramidFlowVideoTextEncoderLoader": "Pyramid Flow Text Encoder Loader",
        "PyramidFlowVideoTextEncode": "Pyramid Flow Text Encode",
        "PyramidFlowVideoImageToVideo": "Pyramid Flow Image To Video",
        "PyramidFlowVideoSampler": "Pyramid Flow Sampler",
        "PyramidFlowVideoVAEDecode": "Pyramid Flow VAE Decode",
        "PyramidFlowVideoVAEEncode": "Pyramid Flow VAE Encode",
    }

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
