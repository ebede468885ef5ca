"""The library's front door: load an official checkpoint folder, then text-to-video, image-to-video, extension and
decoding in one object. Each method is a few steps of :mod:`pyramid_flow.orchestration` (the same steps the
ComfyUI nodes call) with the models placed by :class:`~pyramid_flow.placement.DevicePlacement`.
"""

import json
import logging
import os
import warnings
from typing import Iterator, Mapping, Optional, Sequence, Tuple, Union

import torch

from .dit import load_dit
from .image import ImageLike, first_frame_input, resize_to, to_pil
from .latents import denormalize, pixel_size, to_uint8
from .loading.detect import checkpoint_kind
from .loading.hub import DIT_FOLDERS, VAE_FOLDER
from .loading.state_dict import CheckpointError, read_json
from .memory import stream_cache_memory
from .orchestration import (Noise, SamplingSettings, ScheduleLike, TimedEmbeddings, check_request, decode_video,
                            encode_first_frame, encode_prompts, fit_frames, frames_to_history, run_identity, sample,
                            timed_conditioning, video_size)
from .ops import bound_onednn_caches
from .dit.sequence_parallel import check_split
from .parallel import ParallelContext
from .placement import DevicePlacement
from .resume import ResumeState, tensor_digest
from .sampler import Conditioning, StepCallback
from .scheduler import PyramidFlowScheduler
from .text import DEFAULT_NEGATIVE_PROMPT, PyramidTextEncoder, TextEmbeddings
from .variants import Variant, get_variant
from .vae import FAST_DECODE, SAVE_MEMORY_DECODE, DecodeSettings, load_vae

log = logging.getLogger("pyramid_flow")


def request_key(prompt, negative_prompt, prompt_schedule) -> str:
    """The text of a request, as its resume state records it."""
    schedule = prompt_schedule if prompt_schedule is None or isinstance(prompt_schedule, str) else list(prompt_schedule)
    return json.dumps({"prompt": prompt, "negative": negative_prompt, "schedule": schedule}, sort_keys=True)


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
        parallel: Optional[ParallelContext] = None,
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
        self.parallel = parallel  # CFG halves and sequence shares over ranks (pyramid_flow.parallel); None: one process

    def placed(self, module: torch.nn.Module) -> DevicePlacement:
        """How ``module`` reaches the compute device: resident, or moved there only while it runs (``offload``)."""
        return DevicePlacement(module, self.device, self.offload)

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
        parallel: Optional[ParallelContext] = None,
    ) -> "PyramidFlowPipeline":
        """Load an official Hugging Face folder (``rain1011/pyramid-flow-miniflux`` or ``-sd3`` layout).

        ``offload`` defaults to on for CUDA (T5-XXL, DiT and VAE together exceed a 24 GB card at 768p).
        ``dit_path`` / ``vae_path`` replace that component of ``root`` with other weights (a fine-tune: a
        ``checkpoint-N`` folder or a file of the official training scripts, see :func:`~pyramid_flow.dit.load_dit`);
        the config.json of ``root``'s component still describes the architecture. ``ema``: the DiT's EMA weights.
        ``parallel``: this process's place in a parallel run (:func:`pyramid_flow.parallel.from_environment`).
        """
        bound_onednn_caches()
        device = torch.device(device)
        dtype = dtype or default_dtype(device)
        offload = device.type == "cuda" if offload is None else offload
        load_device = torch.device("cpu") if offload else device
        dit_folder_path = find_dit_folder(root, dit_folder)
        dit_config = read_json(os.path.join(dit_folder_path, "config.json"))
        if parallel is not None and parallel.sequence is not None and "num_attention_heads" in dit_config:
            check_split(parallel.sequence.size, dit_config["num_attention_heads"])  # before any weight loads
        dit, info = load_dit(dit_path or dit_folder_path, dtype=dtype, device=load_device, ema=ema, config=dit_config)
        variant = get_variant(info.variant)
        vae_folder = os.path.join(root, VAE_FOLDER)
        vae = load_vae(vae_path or vae_folder, dtype=dtype, device=load_device,
                       config=read_json(os.path.join(vae_folder, "config.json")))
        text_encoder = (
            PyramidTextEncoder.from_pretrained(root, variant.name, dtype=dtype, device=load_device) if load_text_encoder else None
        )
        return cls(dit, vae, text_encoder, variant, checkpoint_kind(dit_folder_path), device, dtype, offload=offload,
                   compile_options=compile_options, parallel=parallel)

    # --- text --------------------------------------------------------------------------------------------------

    def _encode_prompts(self, prompt, negative_prompt, prompt_schedule=None,
                        add_suffix: bool = True) -> Tuple[TimedEmbeddings, TextEmbeddings]:
        """:func:`~pyramid_flow.orchestration.encode_prompts` with the text encoders placed once for all texts."""
        if self.text_encoder is None:
            raise RuntimeError("this pipeline was loaded without text encoders: pass embeddings to the sampler instead")
        with self.placed(self.text_encoder).loaded() as encoder:
            return encode_prompts(lambda texts: encoder.encode(texts).to(self.device), prompt, negative_prompt,
                                  prompt_schedule, add_suffix)

    def encode_prompt(
        self, prompt: Union[str, Sequence[str]], negative_prompt: Optional[str] = DEFAULT_NEGATIVE_PROMPT, add_suffix: bool = True
    ) -> Tuple[TextEmbeddings, TextEmbeddings]:
        """(positive, negative) embeddings; the official suffix goes on positive prompts only, None negative = ''."""
        ((_, positive),), negative = self._encode_prompts(prompt, negative_prompt, add_suffix=add_suffix)
        return positive, negative

    def encode_conditioning(self, prompt: Union[str, Sequence[str]], negative_prompt: Optional[str],
                            prompt_schedule: Optional[ScheduleLike], latent_frames: int) -> Tuple[Conditioning, TextEmbeddings]:
        """The positive conditioning (one prompt, or a schedule with each distinct prompt encoded once) and the
        negative one."""
        timed, negative = self._encode_prompts(prompt, negative_prompt, prompt_schedule)
        return timed_conditioning(timed, latent_frames), negative

    # --- sampling ----------------------------------------------------------------------------------------------

    def check_request(self, width: int, height: int, latent_frames: int) -> None:
        """Fail before any heavy work on an impossible request; warn on sizes the checkpoint was not trained for."""
        warning = check_request(width, height, latent_frames, self.checkpoint)
        if warning:
            warnings.warn(warning, stacklevel=3)

    def _sample(self, cond: Conditioning, uncond: TextEmbeddings, settings: SamplingSettings, latent_frames: int,
                callback: Optional[StepCallback], resume_dir: Optional[str], request: str, start_key: str,
                **start) -> torch.Tensor:
        """Sample on the placed DiT; with ``resume_dir``, keep the finished frames there and continue after the
        ones a stopped run of the same request left (``request``, ``start_key``: what identifies it)."""
        resume = None
        if resume_dir is not None and self.parallel is not None:
            log.info("A parallel run keeps no resume state (every rank would write the same frames).")
        elif resume_dir is not None:
            size = video_size(start.get("size"), start.get("image_moments"), start.get("history"))
            resume = ResumeState(resume_dir, run_identity(self.dit, self.variant.name, settings, size, request,
                                                          start_key))
        return sample(self.placed(self.dit), cond, uncond, settings, latent_frames=latent_frames, dtype=self.dtype,
                      callback=callback, compile_options=self.compile_options, scheduler=self.scheduler,
                      resume=resume, parallel=self.parallel, **start)

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
        resume_dir: Optional[str] = None,
    ) -> torch.Tensor:
        """Text-to-video of ``temp`` latent frames (the official argument name; frames = 8 temp - 7). Returns
        normalised latents (``output_type='latent'``) or uint8 frames [F, H, W, 3].

        ``prompt_schedule`` (prompt travel) replaces ``prompt`` with timed prompts; ``history_window`` bounds the
        history (see :mod:`pyramid_flow.sampler`); ``resume_dir`` keeps the finished frames there, so the same call
        after any fault continues where it stopped (:mod:`pyramid_flow.resume`).
        """
        self.check_request(width, height, temp)
        cond, uncond = self.encode_conditioning(prompt, negative_prompt, prompt_schedule, temp)
        settings = SamplingSettings(num_inference_steps, video_num_inference_steps, guidance_scale,
                                    video_guidance_scale, seed or 0, noise, history_window)
        latents = self._sample(cond, uncond, settings, temp, callback, resume_dir,
                               request_key(prompt, negative_prompt, prompt_schedule), "text-to-video",
                               size=(height, width))
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
        resume_dir: Optional[str] = None,
    ) -> torch.Tensor:
        """Image-to-video; ``temp`` counts the image frame. ``size`` (width, height) resizes the image first;
        ``resume_dir`` as in :meth:`generate`."""
        image = resize_to(input_image, *size, mode=resize_mode) if size else to_pil(input_image)
        self.check_request(image.width, image.height, temp)
        cond, uncond = self.encode_conditioning(prompt, negative_prompt, prompt_schedule, temp)
        moments = self.encode_image(image, callback=decode_callback)
        settings = SamplingSettings(num_inference_steps, num_inference_steps, guidance_scale, video_guidance_scale,
                                    seed or 0, noise, history_window)
        latents = self._sample(cond, uncond, settings, temp, callback, resume_dir,
                               request_key(prompt, negative_prompt, prompt_schedule),
                               tensor_digest(first_frame_input(image)), image_moments=moments, variant=self.variant)
        return self._output(latents, output_type, save_memory, decode_callback)

    def extend(
        self,
        latents: torch.Tensor,
        prompt: Union[str, Sequence[str]],
        new_latent_frames: int,
        num_inference_steps: Union[int, Sequence[int]] = (10, 10, 10),
        guidance_scale: float = 7.0,
        video_guidance_scale: float = 5.0,
        negative_prompt: Optional[str] = DEFAULT_NEGATIVE_PROMPT,
        seed: Optional[int] = None,
        noise: Noise = None,
        callback: Optional[StepCallback] = None,
        history_window: Optional[int] = None,
        prompt_schedule: Optional[ScheduleLike] = None,
        resume_dir: Optional[str] = None,
    ) -> torch.Tensor:
        """Continue a video by ``new_latent_frames``: normalised latents [B, 16, T0, h, w] -> [B, 16,
        T0 + new_latent_frames, h, w].

        With the default noise and the same seed, extending the first T0 frames of a run by N gives that run's
        frames T0 .. T0 + N - 1. A ``prompt_schedule`` counts seconds from the start of the whole video;
        ``resume_dir`` as in :meth:`generate`.
        """
        height, width = pixel_size(latents)
        total = latents.shape[2] + new_latent_frames
        self.check_request(width, height, total)
        cond, uncond = self.encode_conditioning(prompt, negative_prompt, prompt_schedule, total)
        settings = SamplingSettings(num_inference_steps, num_inference_steps, guidance_scale, video_guidance_scale,
                                    seed or 0, noise, history_window)
        return self._sample(cond, uncond, settings, total, callback, resume_dir,
                            request_key(prompt, negative_prompt, prompt_schedule), tensor_digest(latents),
                            history=latents)

    # --- VAE ---------------------------------------------------------------------------------------------------

    def encode_image(self, image: ImageLike, callback=None) -> torch.Tensor:
        """An image (already at the video size) -> VAE moments [1, 32, 1, H/8, W/8] (mean ‖ logvar), encoded as the
        official image-to-video."""
        return encode_first_frame(self.placed(self.vae), image, callback=callback)

    def frames_to_history(self, frames: torch.Tensor, size: Optional[Tuple[int, int]] = None,
                          callback=None) -> torch.Tensor:
        """A video to continue, as frames [F, H, W, 3] (uint8, or float in [0, 1]) -> normalised latents
        [1, 16, T, h, w]: the first 1 + 8k frames, resized to ``size`` = (width, height) when given."""
        frames = frames.float() / 255 if frames.dtype == torch.uint8 else frames
        fitted, note = fit_frames(frames, size)
        if note:
            log.info("%s", note)
        return frames_to_history(self.placed(self.vae), fitted, self.variant, callback=callback)

    @torch.no_grad()
    def iter_frames(self, latents: torch.Tensor, settings: DecodeSettings = SAVE_MEMORY_DECODE,
                    callback=None) -> Iterator[torch.Tensor]:
        """Normalised latents -> uint8 frames [n, H, W, 3], one decoded chunk at a time: a video of any length is
        written out with the memory of one chunk (the numbers equal :meth:`decode`'s). In a parallel run every rank
        must iterate: each decodes its share of the tiles, and rank 0 alone yields the frames."""
        share = self.parallel.tile_share() if self.parallel is not None else None
        with self.placed(self.vae).loaded() as vae:
            latent = denormalize(latents, self.variant)
            for piece in vae.iter_decode(latent, settings.window_size, settings.tile_sample_min_size,
                                         callback=callback, cache_device=self._cache_device(vae, latent, settings),
                                         share=share):
                yield to_uint8(piece)

    def _cache_device(self, vae: torch.nn.Module, latent: torch.Tensor, settings: DecodeSettings) -> Optional[torch.device]:
        """The CPU when every tile's causal cache together would take more than half the free GPU memory (768p has
        28 tiles of 256 px, about 0.5 GB of cache each in bf16); None (keep them on the device) otherwise."""
        if self.device.type != "cuda":
            return None
        needed = stream_cache_memory(vae, tuple(latent.shape), settings.window_size, settings.tile_sample_min_size)
        free, _ = torch.cuda.mem_get_info(self.device)
        return torch.device("cpu") if needed > free // 2 else None

    def decode(self, latents: torch.Tensor, settings: DecodeSettings = SAVE_MEMORY_DECODE, callback=None) -> torch.Tensor:
        """Normalised latents -> uint8 frames [F, H, W, 3]; ``callback(done, total)`` after each decoded piece."""
        video = decode_video(self.placed(self.vae), denormalize(latents, self.variant),
                             settings.tile_sample_min_size or 0, settings.window_size, callback=callback)
        return to_uint8(video)
