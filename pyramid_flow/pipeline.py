"""Everything wired together: load an official checkpoint folder, encode prompts, sample, decode.

The command line (``pyramid_flow.cli``) is the only user of this module; ComfyUI's nodes call the library pieces
themselves.
"""

import os
from contextlib import contextmanager
from typing import Iterator, Mapping, Optional, Sequence, Tuple, Union

import torch

from . import latents as latent_utils
from .dit import load_dit
from .dit.compile import compiled_blocks
from .image import ImageLike, image_to_vae_input, resize_to, to_pil
from .loading.detect import checkpoint_kind
from .loading.hub import DIT_FOLDERS, VAE_FOLDER
from .loading.state_dict import CheckpointError, read_json
from .memory import stream_cache_memory
from .noise import NoiseSource, make_noise
from .sampler import Conditioning, PyramidSampler, StepCallback
from .scheduler import PyramidFlowScheduler
from .text import (DEFAULT_NEGATIVE_PROMPT, PromptSchedule, PyramidTextEncoder, TextEmbeddings, effective_prompts,
                   parse_prompt_schedule, schedule_units)
from .variants import Variant, get_variant
from .vae import ENCODE_TILE, FAST_DECODE, SAVE_MEMORY_DECODE, DecodeSettings, load_vae

Noise = Union[str, NoiseSource, None]  # "default", "official", or a source; None = "default"
ScheduleLike = Union[str, Sequence[Tuple[float, str]]]  # "0: a / 4: b" or [(0.0, "a"), (4.0, "b")]


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
        compile_options: Optional[Mapping] = None,
    ):
        """``offload``: keep the models on the CPU and move each to ``device`` only while it runs (text encoders,
        then the DiT, then the VAE), the official ``cpu_offloading``; for cards that cannot hold all at once.
        ``compile_options``: ``torch.compile`` kwargs for the DiT blocks while sampling ({} for the defaults;
        None runs eager)."""
        self.dit, self.vae, self.text_encoder = dit, vae, text_encoder
        self.variant, self.checkpoint = variant, checkpoint
        self.device, self.dtype = torch.device(device), dtype
        self.scheduler = scheduler or PyramidFlowScheduler()
        self.offload = offload
        self.compile_options = compile_options

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

    @contextmanager
    def _sampling_dit(self):
        """The DiT placed for sampling, its blocks compiled when ``compile_options`` asks for it."""
        with self._placed(self.dit) as dit, compiled_blocks(dit, self.compile_options):
            yield dit

    @classmethod
    def from_pretrained(
        cls,
        root: str,
        dit_folder: Optional[str] = None,
        device: Union[str, torch.device] = "cpu",
        dtype: Optional[torch.dtype] = None,
        load_text_encoder: bool = True,
        offload: Optional[bool] = None,
        compile_options: Optional[Mapping] = None,
        dit_path: Optional[str] = None,
        vae_path: Optional[str] = None,
        ema: bool = False,
    ) -> "PyramidFlowPipeline":
        """Load an official Hugging Face folder (``rain1011/pyramid-flow-miniflux`` or ``-sd3`` layout).

        ``offload`` defaults to on for CUDA (T5-XXL, DiT and VAE together exceed a 24 GB card at 768p).
        ``dit_path`` / ``vae_path`` replace that component of ``root`` with other weights (a fine-tune: a
        ``checkpoint-N`` folder or a file of the official training scripts, see :func:`~pyramid_flow.dit.load_dit`);
        the config.json of ``root``'s component still describes the architecture. ``ema``: the DiT's EMA weights.
        """
        device = torch.device(device)
        dtype = dtype or default_dtype(device)
        offload = device.type == "cuda" if offload is None else offload
        load_device = torch.device("cpu") if offload else device
        dit_folder_path = find_dit_folder(root, dit_folder)
        dit, info = load_dit(dit_path or dit_folder_path, dtype=dtype, device=load_device, ema=ema,
                             config=read_json(os.path.join(dit_folder_path, "config.json")))
        variant = get_variant(info.variant)
        vae_folder = os.path.join(root, VAE_FOLDER)
        vae = load_vae(vae_path or vae_folder, dtype=dtype, device=load_device,
                       config=read_json(os.path.join(vae_folder, "config.json")))
        text_encoder = (
            PyramidTextEncoder.from_pretrained(root, variant.name, dtype=dtype, device=load_device) if load_text_encoder else None
        )
        return cls(dit, vae, text_encoder, variant, checkpoint_kind(dit_folder_path), device, dtype, offload=offload,
                   compile_options=compile_options)

    # --- text --------------------------------------------------------------------------------------------------

    def encode_prompt(
        self, prompt: Union[str, Sequence[str]], negative_prompt: Optional[str] = DEFAULT_NEGATIVE_PROMPT, add_suffix: bool = True
    ) -> Tuple[TextEmbeddings, TextEmbeddings]:
        """(positive, negative) embeddings; the official suffix goes on positive prompts only, None negative = ''."""
        if self.text_encoder is None:
            raise RuntimeError("this pipeline was loaded without text encoders: pass embeddings to the sampler instead")
        prompts, negatives = effective_prompts(prompt, negative_prompt, add_suffix)
        with self._placed(self.text_encoder) as encoder:
            return encoder.encode(prompts).to(self.device), encoder.encode(negatives).to(self.device)

    def encode_conditioning(self, prompt: Union[str, Sequence[str]], negative_prompt: Optional[str],
                            prompt_schedule: Optional[ScheduleLike], num_units: int) -> Tuple[Conditioning, TextEmbeddings]:
        """The positive conditioning (one prompt, or a schedule with each distinct prompt encoded once) and the
        negative one."""
        if prompt_schedule is None:
            return self.encode_prompt(prompt, negative_prompt)
        entries = parse_prompt_schedule(prompt_schedule) if isinstance(prompt_schedule, str) else list(prompt_schedule)
        units = schedule_units(entries, num_units)
        texts = list(dict.fromkeys(text for _, text in units))
        embeddings = {}
        for text in texts:
            embeddings[text], uncond = self.encode_prompt(text, negative_prompt)
        return PromptSchedule.from_texts(units, embeddings), uncond

    # --- sampling ----------------------------------------------------------------------------------------------

    def check_request(self, width: int, height: int, temp: int) -> None:
        """Fail before any heavy work on an impossible request; warn on sizes the checkpoint was not trained for."""
        latent_utils.check_resolution(width, height)
        latent_utils.check_temp(temp, self.checkpoint)
        latent_utils.warn_resolution(width, height, temp, self.checkpoint)

    def _noise(self, seed: Optional[int], noise: Noise) -> NoiseSource:
        """``noise`` itself when it is a source, else the source registered under its name for ``seed``."""
        if noise is not None and not isinstance(noise, str):
            return noise
        return make_noise(noise or "default", 0 if seed is None else seed, gamma=self.scheduler.gamma, device=self.device)

    def _sampler(self, dit: torch.nn.Module, seed: Optional[int], noise: Noise, callback) -> PyramidSampler:
        return PyramidSampler(dit, self._noise(seed, noise), self.device, self.dtype, self.scheduler, callback)

    def _output(self, latents: torch.Tensor, output_type: str, save_memory: bool, callback) -> torch.Tensor:
        if output_type == "latent":
            return latents
        return self.decode(latents, SAVE_MEMORY_DECODE if save_memory else FAST_DECODE, callback=callback)

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
        noise: Noise = None,
        output_type: str = "uint8",
        save_memory: bool = True,
        callback: Optional[StepCallback] = None,
        history_window: Optional[int] = None,
        prompt_schedule: Optional[ScheduleLike] = None,
        decode_callback=None,
    ) -> torch.Tensor:
        """Text-to-video. Returns normalised latents (``output_type='latent'``) or uint8 frames [F, H, W, 3].

        ``prompt_schedule`` (prompt travel) replaces ``prompt`` with timed prompts; ``history_window`` bounds the
        history (see :mod:`pyramid_flow.sampler`).
        """
        self.check_request(width, height, temp)
        cond, uncond = self.encode_conditioning(prompt, negative_prompt, prompt_schedule, temp)
        with self._sampling_dit() as dit:
            latents = self._sampler(dit, seed, noise, callback).text_to_video(
                cond, uncond, height=height, width=width, temp=temp, first_frame_steps=num_inference_steps,
                video_steps=video_num_inference_steps, guidance_scale=guidance_scale,
                video_guidance_scale=video_guidance_scale, history_window=history_window,
            )
        return self._output(latents, output_type, save_memory, decode_callback)

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
        noise: Noise = None,
        output_type: str = "uint8",
        save_memory: bool = True,
        callback: Optional[StepCallback] = None,
        size: Optional[Tuple[int, int]] = None,
        resize_mode: str = "crop",
        history_window: Optional[int] = None,
        prompt_schedule: Optional[ScheduleLike] = None,
        decode_callback=None,
    ) -> torch.Tensor:
        """Image-to-video; ``temp`` counts the image frame. ``size`` (width, height) resizes the image first."""
        image = resize_to(input_image, *size, mode=resize_mode) if size else to_pil(input_image)
        self.check_request(image.width, image.height, temp)
        cond, uncond = self.encode_conditioning(prompt, negative_prompt, prompt_schedule, temp)
        moments = self.encode_image(image, callback=decode_callback)
        with self._sampling_dit() as dit:
            latents = self._sampler(dit, seed, noise, callback).image_to_video(
                cond, uncond, image_moments=moments, variant=self.variant, temp=temp, steps=num_inference_steps,
                guidance_scale=guidance_scale, video_guidance_scale=video_guidance_scale, history_window=history_window,
            )
        return self._output(latents, output_type, save_memory, decode_callback)

    def extend(
        self,
        latents: torch.Tensor,
        prompt: Union[str, Sequence[str]],
        units: int,
        num_inference_steps: Union[int, Sequence[int]] = (10, 10, 10),
        guidance_scale: float = 7.0,
        video_guidance_scale: float = 5.0,
        negative_prompt: Optional[str] = DEFAULT_NEGATIVE_PROMPT,
        seed: Optional[int] = None,
        noise: Noise = None,
        callback: Optional[StepCallback] = None,
        history_window: Optional[int] = None,
        prompt_schedule: Optional[ScheduleLike] = None,
    ) -> torch.Tensor:
        """Continue a video: normalised latents [B, 16, T0, h, w] -> [B, 16, T0 + units, h, w].

        With the default noise and the same seed, extending the first T0 frames of a run by N gives that run's
        frames T0 .. T0 + N - 1. A ``prompt_schedule`` counts seconds from the start of the whole video.
        """
        height, width = latent_utils.pixel_size(latents)
        self.check_request(width, height, latents.shape[2] + units)
        cond, uncond = self.encode_conditioning(prompt, negative_prompt, prompt_schedule, latents.shape[2] + units)
        with self._sampling_dit() as dit:
            return self._sampler(dit, seed, noise, callback).extend(
                cond, uncond, history=latents, units=units, steps=num_inference_steps, guidance_scale=guidance_scale,
                video_guidance_scale=video_guidance_scale, history_window=history_window,
            )

    # --- VAE ---------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_image(self, image, tile_sample_min_size: Optional[int] = ENCODE_TILE, callback=None) -> torch.Tensor:
        """PIL image -> VAE moments [1, 32, 1, H/8, W/8] (mean ‖ logvar), encoded as the official image-to-video."""
        video = image_to_vae_input(image).to(device=self.device, dtype=self.dtype)
        with self._placed(self.vae) as vae:
            return vae.encode(video, tile_sample_min_size=tile_sample_min_size, callback=callback)

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor, callback=None) -> torch.Tensor:
        """uint8 frames [F, H, W, 3] (F = 1 + 8k) -> normalised latents [1, 16, 1 + k, H/8, W/8] (the posterior
        mean), to extend a video given as frames."""
        video = frames.permute(3, 0, 1, 2)[None].to(device=self.device, dtype=self.dtype).div(127.5).sub(1)
        with self._placed(self.vae) as vae:
            moments = vae.encode(video, temporal_chunk=True, tile_sample_min_size=ENCODE_TILE, callback=callback)
        return latent_utils.normalize(moments[:, : moments.shape[1] // 2], self.variant)

    @torch.no_grad()
    def iter_frames(self, latents: torch.Tensor, settings: DecodeSettings = SAVE_MEMORY_DECODE,
                    callback=None) -> Iterator[torch.Tensor]:
        """Normalised latents -> uint8 frames [n, H, W, 3], one decoded chunk at a time: a video of any length is
        written out with the memory of one chunk (the numbers equal :meth:`decode`'s)."""
        with self._placed(self.vae) as vae:
            latent = latent_utils.denormalize(latents, self.variant)
            for piece in vae.iter_decode(latent, settings.window_size, settings.tile_sample_min_size,
                                         callback=callback, cache_device=self._cache_device(vae, latent, settings)):
                yield latent_utils.to_uint8(piece)

    def _cache_device(self, vae: torch.nn.Module, latent: torch.Tensor, settings: DecodeSettings) -> Optional[torch.device]:
        """The CPU when every tile's causal cache together would take more than half the free GPU memory (768p has
        28 tiles of 256 px, about 0.5 GB of cache each in bf16); None (keep them on the device) otherwise."""
        if self.device.type != "cuda":
            return None
        needed = stream_cache_memory(vae, tuple(latent.shape), settings.window_size, settings.tile_sample_min_size)
        free, _ = torch.cuda.mem_get_info(self.device)
        return torch.device("cpu") if needed > free // 2 else None

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, settings: DecodeSettings = SAVE_MEMORY_DECODE, callback=None) -> torch.Tensor:
        """Normalised latents -> uint8 frames [F, H, W, 3]; ``callback(done, total)`` after each decoded piece."""
        with self._placed(self.vae) as vae:
            video = vae.decode(
                latent_utils.denormalize(latents, self.variant), temporal_chunk=True, window_size=settings.window_size,
                tile_sample_min_size=settings.tile_sample_min_size, callback=callback,
            )
        return latent_utils.to_uint8(video)
