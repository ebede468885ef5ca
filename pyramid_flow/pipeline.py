"""Everything wired together: load an official checkpoint folder, encode prompts, sample, decode."""

import os
from contextlib import contextmanager
from typing import List, Optional, Sequence, Tuple, Union

import torch

from . import latents as latent_utils
from .dit import load_dit
from .image import ImageLike, image_to_vae_input, resize_to, to_pil
from .loading.hub import DIT_FOLDERS, VAE_FOLDER
from .loading.state_dict import CheckpointError
from .noise import NoiseSource, OfficialNoise
from .sampler import PyramidSampler, StepCallback, draw_latent_noise, draw_posterior_sample
from .scheduler import PyramidFlowScheduler
from .text import PyramidTextEncoder, TextEmbeddings
from .variants import Variant, get_variant
from .vae import load_vae

PROMPT_SUFFIX = ", hyper quality, Ultra HD, 8K"
DEFAULT_NEGATIVE_PROMPT = (
    "cartoon style, worst quality, low quality, blurry, absolute black, absolute white, low res, extra limbs, "
    "extra digits, misplaced objects, mutated anatomy, monochrome, horror"
)
# decode_latent(save_memory): (temporal window in latent frames, spatial tile in pixels)
DECODE_SETTINGS = {True: (1, 256), False: (2, 512)}
ENCODE_TILE = 256  # the official VAE's default tile when tiling is enabled


def checkpoint_kind(name: str) -> Optional[str]:
    """'384p' / '768p' / 'image' from a DiT folder or file name, when the name says it (weights cannot tell)."""
    name = os.path.basename(os.path.normpath(name)).lower()
    for kind in ("768", "384", "image"):
        if kind in name:
            return kind if kind == "image" else kind + "p"
    return None


def effective_prompts(
    prompt: Union[str, Sequence[str]], negative_prompt: Optional[str] = DEFAULT_NEGATIVE_PROMPT, add_suffix: bool = True
) -> Tuple[List[str], List[str]]:
    """The texts actually encoded: the suffix goes on positive prompts only; a None negative prompt is ''."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if add_suffix:
        prompts = [p + PROMPT_SUFFIX for p in prompts]
    return prompts, [negative_prompt or ""] * len(prompts)


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def find_dit_folder(root: str, dit_folder: Optional[str]) -> str:
    if dit_folder is None:
        present = [name for name in DIT_FOLDERS if os.path.isdir(os.path.join(root, name))]
        if not present:
            raise CheckpointError(f"No DiT folder in '{root}': expected one of {', '.join(DIT_FOLDERS)}.")
        dit_folder = present[0]
    path = os.path.join(root, dit_folder)
    if not os.path.isdir(path):
        raise CheckpointError(f"DiT folder '{dit_folder}' not found in '{root}'.")
    return path


class PyramidFlowPipeline:
    def __init__(
        self,
        dit: torch.nn.Module,
        vae: torch.nn.Module,
        text_encoder: Optional[PyramidTextEncoder],
        variant: Variant,
        checkpoint: Optional[str] = None,
        device: torch.device = torch.device("cpu"),
        dtype: torch.dtype = torch.float32,
        scheduler: Optional[PyramidFlowScheduler] = None,
        offload: bool = False,
    ):
        """``offload``: keep the models on the CPU and move each to ``device`` only while it runs (text encoders,
        then the DiT, then the VAE), the official ``cpu_offloading``; for cards that cannot hold all at once."""
        self.dit, self.vae, self.text_encoder = dit, vae, text_encoder
        self.variant, self.checkpoint = variant, checkpoint
        self.device, self.dtype = torch.device(device), dtype
        self.scheduler = scheduler or PyramidFlowScheduler()
        self.offload = offload

    @contextmanager
    def _placed(self, module: torch.nn.Module):
        """``module`` on the compute device inside the block (and back on the CPU after it when offloading)."""
        if self.offload:
            module.to(self.device)
        try:
            yield module
        finally:
            if self.offload:
                module.to("cpu")
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    @classmethod
    def from_pretrained(
        cls,
        root: str,
        dit_folder: Optional[str] = None,
        device: Union[str, torch.device] = "cpu",
        dtype: Optional[torch.dtype] = None,
        load_text_encoder: bool = True,
        offload: Optional[bool] = None,
    ) -> "PyramidFlowPipeline":
        """Load an official Hugging Face folder (``rain1011/pyramid-flow-miniflux`` or ``-sd3`` layout).

        ``offload`` defaults to on for CUDA (T5-XXL, DiT and VAE together exceed a 24 GB card at 768p).
        """
        device = torch.device(device)
        dtype = dtype or default_dtype(device)
        offload = device.type == "cuda" if offload is None else offload
        load_device = torch.device("cpu") if offload else device
        dit_path = find_dit_folder(root, dit_folder)
        dit, info = load_dit(dit_path, dtype=dtype, device=load_device)
        variant = get_variant(info.variant)
        vae = load_vae(os.path.join(root, VAE_FOLDER), dtype=dtype, device=load_device)
        text_encoder = (
            PyramidTextEncoder.from_pretrained(root, variant.name, dtype=dtype, device=load_device) if load_text_encoder else None
        )
        return cls(dit, vae, text_encoder, variant, checkpoint_kind(dit_path), device, dtype, offload=offload)

    def encode_prompt(
        self, prompt: Union[str, Sequence[str]], negative_prompt: Optional[str] = DEFAULT_NEGATIVE_PROMPT, add_suffix: bool = True
    ) -> Tuple[TextEmbeddings, TextEmbeddings]:
        """(positive, negative) embeddings; the official suffix goes on positive prompts only, None negative = ''."""
        if self.text_encoder is None:
            raise RuntimeError("this pipeline was loaded without text encoders: pass embeddings to the sampler instead")
        prompts, negatives = effective_prompts(prompt, negative_prompt, add_suffix)
        with self._placed(self.text_encoder) as encoder:
            return encoder.encode(prompts).to(self.device), encoder.encode(negatives).to(self.device)

    def check_request(self, width: int, height: int, temp: int) -> None:
        """Fail before any heavy work on an impossible request; warn on sizes the checkpoint was not trained for."""
        latent_utils.check_resolution(width, height)
        latent_utils.check_temp(temp, self.checkpoint)
        latent_utils.warn_resolution(width, height, temp, self.checkpoint)

    def _noise(self, seed: Optional[int], noise):
        """A noise source: ``noise`` itself, or for ``seed`` the default source / ``noise='official'``."""
        if noise is not None and not isinstance(noise, str):
            return noise
        seed = 0 if seed is None else seed
        if noise == "official":
            return OfficialNoise(seed, self.device, gamma=self.scheduler.gamma)
        if noise in (None, "default"):
            return NoiseSource(seed, gamma=self.scheduler.gamma)
        raise ValueError(f"noise must be 'default', 'official' or a noise source, got '{noise}'")

    def generate(
        self,
        prompt: Union[str, Sequence[str]],
        height: int,
        width: int,
        temp: int = 1,
        num_inference_steps: Union[int, Sequence[int]] = (20, 20, 20),
        video_num_inference_steps: Union[int, Sequence[int]] = (10, 10, 10),
        guidance_scale: float = 7.0,
        video_guidance_scale: float = 5.0,
        negative_prompt: Optional[str] = DEFAULT_NEGATIVE_PROMPT,
        seed: Optional[int] = None,
        noise=None,
        output_type: str = "uint8",
        save_memory: bool = True,
        callback: Optional[StepCallback] = None,
    ) -> torch.Tensor:
        """Text-to-video. Returns normalised latents (``output_type='latent'``) or uint8 frames [F, H, W, 3]."""
        self.check_request(width, height, temp)
        cond, uncond = self.encode_prompt(prompt, negative_prompt)
        with self._placed(self.dit) as dit:
            sampler = PyramidSampler(dit, self._noise(seed, noise), self.device, self.dtype, self.scheduler, callback)
            latents = sampler.text_to_video(
                cond, uncond, height=height, width=width, temp=temp, first_frame_steps=num_inference_steps,
                video_steps=video_num_inference_steps, guidance_scale=guidance_scale, video_guidance_scale=video_guidance_scale,
            )
        return latents if output_type == "latent" else self.decode(latents, *DECODE_SETTINGS[save_memory])

    def generate_i2v(
        self,
        input_image: ImageLike,
        prompt: Union[str, Sequence[str]] = "",
        temp: int = 16,
        num_inference_steps: Union[int, Sequence[int]] = (10, 10, 10),
        guidance_scale: float = 7.0,
        video_guidance_scale: float = 4.0,
        negative_prompt: Optional[str] = DEFAULT_NEGATIVE_PROMPT,
        seed: Optional[int] = None,
        noise=None,
        output_type: str = "uint8",
        save_memory: bool = True,
        callback: Optional[StepCallback] = None,
        size: Optional[Tuple[int, int]] = None,
        resize_mode: str = "crop",
    ) -> torch.Tensor:
        """Image-to-video; ``temp`` counts the image frame. ``size`` (width, height) resizes the image first."""
        image = resize_to(input_image, *size, mode=resize_mode) if size else to_pil(input_image)
        self.check_request(image.width, image.height, temp)
        cond, uncond = self.encode_prompt(prompt, negative_prompt)
        noise = self._noise(seed, noise)
        initial_noise = draw_latent_noise(noise, cond.prompt_embeds.shape[0], temp, image.height, image.width, self.device, self.dtype)
        image_latent = self.encode_image(image, noise)
        with self._placed(self.dit) as dit:
            sampler = PyramidSampler(dit, noise, self.device, self.dtype, self.scheduler, callback)
            latents = sampler.image_to_video(
                cond, uncond, image_latent=image_latent, temp=temp, steps=num_inference_steps,
                guidance_scale=guidance_scale, video_guidance_scale=video_guidance_scale, initial_noise=initial_noise,
            )
        return latents if output_type == "latent" else self.decode(latents, *DECODE_SETTINGS[save_memory])

    @torch.no_grad()
    def encode_image(self, image, noise, tile_sample_min_size: Optional[int] = ENCODE_TILE, **encode_kwargs) -> torch.Tensor:
        """PIL image -> normalised first-frame latent [1, 16, 1, H/8, W/8] (a posterior sample, as the official)."""
        video = image_to_vae_input(image).to(device=self.device, dtype=self.dtype)
        with self._placed(self.vae) as vae:
            moments = vae.encode(video, tile_sample_min_size=tile_sample_min_size, **encode_kwargs)
        return latent_utils.normalize(draw_posterior_sample(noise, moments), self.variant)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, window_size: int = 1, tile_sample_min_size: Optional[int] = 256) -> torch.Tensor:
        """Normalised latents -> uint8 frames [F, H, W, 3]."""
        with self._placed(self.vae) as vae:
            video = vae.decode(
                latent_utils.denormalize(latents, self.variant), temporal_chunk=True,
                window_size=window_size, tile_sample_min_size=tile_sample_min_size,
            )
        return latent_utils.to_uint8(video)

