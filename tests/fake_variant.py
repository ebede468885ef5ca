"""A third model family, defined the way a new variant is added: one module, one registration.

The 'fake' DiT is miniFLUX with one extra parameter whose key marks its checkpoints; its repository, folders,
encoders and latent constants are invented. tests/test_variant_registration.py checks that loading, detection,
downloads, messages and sampling work for it with nothing else touched.
"""

import torch
import torch.nn as nn

from pyramid_flow.dit import PyramidFluxDiT
from pyramid_flow.variants import LatentNorm, Variant


class FakeDiT(PyramidFluxDiT):
    def __init__(self, *args, dtype=None, device=None, **kwargs):
        super().__init__(*args, dtype=dtype, device=device, **kwargs)
        self.fake_marker = nn.Parameter(torch.ones(1, dtype=dtype, device=device))


FAKE = Variant(
    name="fake",
    display_name="Fake",
    official_name="pyramid_fake",
    repo_id="someone/pyramid-flow-fake",
    image_norm=LatentNorm(shift=0.5, scale=0.25),
    video_norm=LatentNorm(shift=-0.5, scale=0.5),
    dit_folders=("diffusion_transformer_384p",),
    dit_keys=("fake_marker",),
    text_encoder_folders=("text_encoder", "text_encoder_2"),
    tokenizer_folders=("tokenizer", "tokenizer_2"),
    clip_projected=False,
    pooled_content="the pooled vector of the fake CLIP",
    comfy_clip=("clip_l", "t5xxl"),
    comfy_clip_loader="DualCLIPLoader type flux (clip_l + t5xxl)",
)
