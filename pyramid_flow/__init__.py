"""Pyramid Flow (arXiv 2410.05954) in pure PyTorch: both DiT variants, the causal video VAE, the text encoders,
the pyramid scheduler and the autoregressive sampler. No ComfyUI import anywhere; see docs/architecture.md.

Entry points: ``pyramid_flow.pipeline.PyramidFlowPipeline`` and ``python -m pyramid_flow``.
"""
