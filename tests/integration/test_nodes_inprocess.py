"""The nodes against real ComfyUI modules in this process (no server): CLIP objects, ModelPatcher, model
management, partial loading."""

import os
import shutil

import pytest
import torch

import harness
from prompts import NEGATIVE, PROMPT, TINY
from tolerance import assert_within_ulps


FP8_DRIFT = 0.2  # bound on the relative RMS change of the tiny latent with fp8_e4m3fn weights (measured 0.076)


@pytest.fixture(scope="module")
def comfy_env(base_dir):
    harness.import_comfy()
    import folder_paths

    from pack_loader import load_pack

    pack = load_pack()  # registers models/pyramidflow of the ComfyUI root; the test base dir goes first
    models = os.path.join(base_dir, "models")
    for name in ("pyramidflow", "text_encoders", "vae", "diffusion_models"):
        folder_paths.add_model_folder_path(name, os.path.join(models, name), is_default=True)
    return pack


def tiny_clip(kind: str, dtype=None):
    """The same tiny CLIP object the server's test loaders build (testing_pack.build_tiny_clip)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pyramid_flow_testing_pack",
                                                  os.path.join(harness.HERE, "testing_pack", "__init__.py"))
    pack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack)
    files = ["clip_l.safetensors", "t5xxl_fp16.safetensors"] if kind == "flux" else [
        "clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"]
    states = [harness.tiny_text_encoder_state(f) for f in files]
    sidecars = [{"model_name": harness.TINY_TEXT_ENCODERS[f][0], "config": harness.TINY_TEXT_ENCODERS[f][1]}
                for f in files]
    return pack.build_tiny_clip(states, sidecars, kind, dtype)


def clip_state(clip):
    """Every option a later encode of someone else's workflow depends on."""
    model, tok = clip.cond_stage_model, clip.tokenizer
    state = {"layer_idx": clip.layer_idx, "tokenizer_options": dict(clip.tokenizer_options)}
    for name in ("clip_l", "clip_g", "t5xxl"):
        sub, sub_tok = getattr(model, name, None), getattr(tok, name, None)
        if sub is not None:
            state[name] = (sub.layer, sub.layer_idx, sub.return_projected_pooled, sub.enable_attention_masks,
                           sub.return_attention_masks, sub.options_default)
        if sub_tok is not None:
            state[name + "_tok"] = (sub_tok.min_length, sub_tok.max_length, sub_tok.pad_to_max_length,
                                    getattr(sub_tok, "min_padding", None))
    return state


def encode_text(node, clip):
    """(positive, negative) of the text encode node with the lane's prompts."""
    return node.execute(prompt=PROMPT, negative_prompt=NEGATIVE, add_quality_suffix=True, clip=clip).result


def core_encode(clip, text):
    """What core CLIPTextEncode does."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


@pytest.mark.parametrize("kind,pooled_dim", [("flux", 32), ("sd3", 80)])
def test_shared_clip_is_not_mutated(comfy_env, kind, pooled_dim):
    """After our encode, core CLIPTextEncode on the same CLIP gives identical output (flux; core's SD3 encode pads
    CLIP to the real 4096 channels, which the tiny SD3 encoders cannot do) and no option is left changed."""
    from pyramid_flow_pack.nodes.conditioning import PyramidFlowVideoTextEncode

    clip = tiny_clip(kind)
    text = "a photo of a cat, (masterpiece:1.2)"
    before = core_encode(clip, text) if kind == "flux" else None
    state = clip_state(clip)
    positive, negative = encode_text(PyramidFlowVideoTextEncode, clip)
    again, _ = encode_text(PyramidFlowVideoTextEncode, clip)
    assert clip_state(clip) == state
    if before is not None:
        after = core_encode(clip, text)
        assert torch.equal(before[0][0], after[0][0])
        assert torch.equal(before[0][1]["pooled_output"], after[0][1]["pooled_output"])
    cond, extra = positive[0]
    assert torch.equal(cond, again[0][0]) and torch.equal(extra["pooled_output"], again[0][1]["pooled_output"])
    assert cond.shape == (1, 128, 32) and extra["pooled_output"].shape == (1, pooled_dim)
    n = int(extra["attention_mask"].sum())
    assert 0 < n < 128 and extra["attention_mask"][0, :n].all() and not cond[0, n:].any()
    assert extra["pyramid_flow_variant"] == ("miniflux" if kind == "flux" else "sd3")
    assert not torch.equal(cond, negative[0][0])


def test_clip_path_matches_official_math(comfy_env):
    """T5 on the real tokens only == transformers T5 on 128 padded tokens with the mask (at real positions);
    miniFLUX pooled == CLIP-L pooler output (un-projected)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from pyramid_flow_pack.nodes.common import t5_window
    from pyramid_flow_pack.nodes.runtime import encode_with_clip

    clip = tiny_clip("flux", torch.float32)  # ComfyUI's CPU default for text encoders is fp16
    text = "a red fox running through snow, hyper quality"
    ours = encode_with_clip(clip, text)
    tokens = clip.tokenize(text)

    _, t5_cfg = harness.TINY_TEXT_ENCODERS["t5xxl_fp16.safetensors"]
    t5 = T5EncoderModel(T5Config(vocab_size=32128, feed_forward_proj="gated-gelu", **t5_cfg)).eval()
    t5.load_state_dict(harness.tiny_text_encoder_state("t5xxl_fp16.safetensors"), strict=False)
    ids, n = t5_window([t for t, _ in tokens["t5xxl"][0]])
    input_ids = torch.tensor([ids + [0] * (128 - n)])
    mask = (torch.arange(128) < n).long()[None]
    with torch.no_grad():
        reference = t5(input_ids=input_ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ours.prompt_embeds[:, :n], reference[:, :n], rtol=1e-4, atol=1e-5)
    assert torch.equal(ours.attention_mask, mask)

    _, l_cfg = harness.TINY_TEXT_ENCODERS["clip_l.safetensors"]
    clip_l = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77,
                                                        eos_token_id=49407, **l_cfg)).eval()
    clip_l.load_state_dict(harness.tiny_text_encoder_state("clip_l.safetensors"))
    ids_l = torch.tensor([[t for t, _ in tokens["l"][0]]])
    with torch.no_grad():
        hidden = clip_l(input_ids=ids_l).last_hidden_state
    pooled = hidden[:, int((ids_l[0] == 49407).nonzero()[0])]  # un-projected, at the first end token
    torch.testing.assert_close(ours.pooled, pooled, rtol=1e-4, atol=1e-5)


def _load_models(comfy_env, variant="miniflux"):
    from pyramid_flow_pack.nodes.loaders import PyramidFlowVideoModelLoader, PyramidFlowVideoVAELoader

    repo = f"pyramid-flow-{variant}"
    dit = PyramidFlowVideoModelLoader.execute(model=f"{repo}/diffusion_transformer_384p", weight_dtype="fp32")[0]
    vae = PyramidFlowVideoVAELoader.execute(vae=f"{repo}/causal_video_vae", dtype="fp32")[0]
    return dit, vae


def test_models_are_model_patchers_of_comfy_ops(comfy_env):
    import comfy.model_patcher

    dit, vae = _load_models(comfy_env)
    for patcher in (dit, vae):
        assert isinstance(patcher, comfy.model_patcher.ModelPatcher)
        weighted = [m for m in patcher.model.modules() if list(m.parameters(recurse=False))]
        plain = [type(m).__name__ for m in weighted if not hasattr(m, "comfy_cast_weights")]
        # loose parameters are allowed only in modules without sub-layers (cast at use time)
        assert len(plain) <= len(weighted) // 4, f"non comfy.ops weight modules: {sorted(set(plain))}"
    assert dit.model.variant_name == "miniflux" and dit.model.checkpoint == "384p"


def _sample(comfy_env, dit, seed=3):
    from pyramid_flow_pack.nodes.conditioning import PyramidFlowVideoTextEncode
    from pyramid_flow_pack.nodes.sampling import PyramidFlowVideoSampler

    positive, negative = encode_text(PyramidFlowVideoTextEncode, tiny_clip("flux"))
    return PyramidFlowVideoSampler.execute(model=dit, positive=positive, negative=negative, **dict(TINY, seed=seed)).result


def test_sampler_loads_only_through_load_models_gpu(comfy_env, monkeypatch):
    import comfy.model_management as mm

    calls = []
    original = mm.load_models_gpu

    def spy(models, memory_required=0, **kwargs):
        calls.append((list(models), memory_required))
        return original(models, memory_required=memory_required, **kwargs)

    monkeypatch.setattr(mm, "load_models_gpu", spy)
    dit, _ = _load_models(comfy_env)
    latent, frames = _sample(comfy_env, dit)
    assert frames == 9 and latent["samples"].shape == (1, 16, 2, 16, 16)
    # the memory model's estimate for the last unit (CFG batch 2, fp32 compute), not a guess
    from pyramid_flow_pack.pyramid_flow.memory import dit_memory

    expected = dit_memory(dit.model.diffusion_model, TINY["height"], TINY["width"], 1, 2, torch.float32)
    assert any(dit in models and memory == expected for models, memory in calls), calls


def test_loaders_read_weights_through_comfyui(comfy_env, monkeypatch):
    """Weights are read by comfy.utils.load_torch_file (memory-mapped; file-backed under dynamic VRAM)."""
    import comfy.utils

    read = []
    original = comfy.utils.load_torch_file

    def spy(path, *args, **kwargs):
        read.append(os.path.basename(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(comfy.utils, "load_torch_file", spy)
    _load_models(comfy_env)
    assert read.count("diffusion_pytorch_model.safetensors") == 2, read  # the DiT's and the VAE's


def test_partial_load_gives_the_same_video(comfy_env, monkeypatch):
    """lowvram: a budget far below the model size leaves most layers offloaded (cast per call); same result.
    On CPU load_models_gpu would load fully, so the patcher's own lowvram load is applied and kept."""
    import comfy.model_management as mm

    dit, _ = _load_models(comfy_env)
    full = _sample(comfy_env, dit)[0]["samples"]
    dit2, _ = _load_models(comfy_env)
    dit2.load(device_to=dit2.load_device, lowvram_model_memory=1024)
    assert any(getattr(m, "comfy_cast_weights", False) for m in dit2.model.modules())
    monkeypatch.setattr(mm, "load_models_gpu", lambda *args, **kwargs: None)
    partial = _sample(comfy_env, dit2)[0]["samples"]
    assert_within_ulps(partial, full, name="partial load")  # weights cast per call vs resident: another path


def test_core_conditioning_is_rejected_with_a_clear_message(comfy_env):
    from pyramid_flow_pack.nodes.sampling import PyramidFlowVideoSampler

    dit, _ = _load_models(comfy_env)
    core = core_encode(tiny_clip("flux"), "a cat")
    with pytest.raises(TypeError, match="not made by 'Pyramid Flow Text Encode'"):
        PyramidFlowVideoSampler.execute(model=dit, positive=core, negative=core, **TINY)


def test_interrupt_inside_a_unit(comfy_env, monkeypatch):
    import comfy.model_management as mm

    from pyramid_flow_pack.nodes import runtime

    dit, _ = _load_models(comfy_env)
    seen = []
    original = runtime.step_callback

    def interrupting(device):
        callback = original(device)

        def wrapped(info):
            seen.append(info.done)
            if info.done == 2:
                mm.interrupt_current_processing(True)
            callback(info)

        return wrapped

    monkeypatch.setattr(runtime, "step_callback", interrupting)
    with pytest.raises(mm.InterruptProcessingException):
        _sample(comfy_env, dit)
    assert seen == [1, 2]
    assert not mm.processing_interrupted()


def test_missing_model_errors_and_optional_download(comfy_env, base_dir, monkeypatch):
    """Off by default: a clear error naming the folder and the switch. On: only the selected folder is fetched
    (huggingface_hub faked here: the lane has no network), into models/pyramidflow/<repo>/, with progress."""
    import fnmatch
    import shutil

    import huggingface_hub

    from pyramid_flow_pack.nodes import models

    repository = harness.tiny_checkpoint("miniflux")
    root = os.path.join(base_dir, "models", "pyramidflow")
    moved = os.path.join(base_dir, "moved_miniflux")
    os.rename(os.path.join(root, "pyramid-flow-miniflux"), moved)
    try:
        with pytest.raises(FileNotFoundError, match="download_if_missing"):
            models.resolve("pyramid-flow-miniflux/causal_video_vae", "vae", False, "VAE", "vae")
        fetched, progress = [], []

        def fake_snapshot_download(repo_id, *, local_dir, allow_patterns, tqdm_class=None):
            """The repository as the tiny miniflux folder; copies what the patterns select, with a tqdm bar."""
            assert repo_id == "rain1011/pyramid-flow-miniflux"
            files = [os.path.relpath(os.path.join(d, f), repository) for d, _, names in os.walk(repository) for f in names]
            files = sorted(f for f in files if any(fnmatch.fnmatch(f, p) for p in allow_patterns))
            bar = tqdm_class(total=len(files))
            for filename in files:
                os.makedirs(os.path.join(local_dir, os.path.dirname(filename)), exist_ok=True)
                shutil.copy(os.path.join(repository, filename), os.path.join(local_dir, filename))
                fetched.append(filename)
                bar.update(1)
                progress.append(bar.node_bar.current)
            bar.close()
            return local_dir

        monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
        path = models.resolve("pyramid-flow-miniflux/causal_video_vae", "vae", True, "VAE", "vae")
        assert path == os.path.join(root, "pyramid-flow-miniflux", "causal_video_vae")
        assert fetched == ["causal_video_vae/config.json", "causal_video_vae/diffusion_pytorch_model.safetensors"]
        assert progress == [1, 2]  # the node's progress bar followed the download
    finally:
        shutil.rmtree(os.path.join(root, "pyramid-flow-miniflux"), ignore_errors=True)
        os.rename(moved, os.path.join(root, "pyramid-flow-miniflux"))


def test_fp8_storage_samples(comfy_env):
    """fp8 weights (storage only) with casting comfy.ops layers: loads, stays fp8 in memory, samples finite."""
    import comfy.ops

    from pyramid_flow_pack.nodes.loaders import PyramidFlowVideoModelLoader

    dit = PyramidFlowVideoModelLoader.execute(model="pyramid-flow-miniflux/diffusion_transformer_384p",
                                              weight_dtype="fp8_e4m3fn")[0]
    linears = [m for m in dit.model.modules() if isinstance(m, comfy.ops.manual_cast.Linear)]
    assert linears and all(m.weight.dtype == torch.float8_e4m3fn for m in linears)
    assert dit.model_size() < PyramidFlowVideoModelLoader.execute(
        model="pyramid-flow-miniflux/diffusion_transformer_384p", weight_dtype="fp32")[0].model_size() / 2
    latent = _sample(comfy_env, dit)[0]["samples"]
    reference = _sample(comfy_env, _load_models(comfy_env)[0])[0]["samples"]  # the same run with fp32 weights
    drift = ((latent - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt()).item()
    assert 0 < drift < FP8_DRIFT, drift  # fp8 storage moves the latent, within the bound measured for it


def test_torch_compile_node_matches_eager(comfy_env, monkeypatch):
    """'Pyramid Flow Torch Compile' compiles every DiT block (inductor on CPU) while sampling: the same latents
    within float rounding, and the loaded model is left uncompiled."""
    from pyramid_flow_pack.nodes.model_patches import PyramidFlowVideoTorchCompile

    dit, _ = _load_models(comfy_env)
    eager = _sample(comfy_env, dit)[0]["samples"]
    compiled_modules = []
    original = torch.compile

    def spy(module, **kwargs):
        compiled_modules.append(kwargs["backend"])
        return original(module, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    patched = PyramidFlowVideoTorchCompile.execute(model=dit, backend="inductor", mode="default", dynamic=False)[0]
    compiled = _sample(comfy_env, patched)[0]["samples"]
    blocks = len(patched.model.diffusion_model.transformer_blocks) + len(patched.model.diffusion_model.single_transformer_blocks)
    assert compiled_modules == ["inductor"] * blocks
    assert not any(isinstance(m, torch._dynamo.eval_frame.OptimizedModule) for m in patched.model.modules())
    assert_within_ulps(compiled, eager, ulps=64, name="compiled vs eager")


def test_decode_retries_smaller_tiles_on_oom(comfy_env, monkeypatch):
    """The decode node catches ComfyUI's OOM exception type, frees the cache and retries with smaller tiles."""
    import comfy.model_management as mm

    from pyramid_flow_pack.nodes.latent import PyramidFlowVideoVAEDecode

    _, vae = _load_models(comfy_env)
    module = vae.model.vae
    original, calls = module.decode, []

    def flaky(z, **kwargs):
        calls.append((kwargs["tile_sample_min_size"], kwargs["window_size"]))
        if len(calls) < 3:
            raise mm.OOM_EXCEPTION("CUDA out of memory (simulated)")
        return original(z, **kwargs)

    monkeypatch.setattr(module, "decode", flaky)
    latent = {"samples": torch.randn(1, 16, 2, 16, 16)}
    images = PyramidFlowVideoVAEDecode.execute(vae=vae, samples=latent, tile_size=256, tile_overlap=0.25,
                                               temporal_window=2)[0]
    assert calls == [(256, 2), (256, 1), (128, 1)]
    assert images.shape == (9, 128, 128, 3) and images.min() >= 0 and images.max() <= 1


def _text(schedule: str = None):
    from pyramid_flow_pack.nodes.conditioning import PyramidFlowVideoPromptSchedule, PyramidFlowVideoTextEncode

    clip = tiny_clip("flux")
    if schedule is None:
        return encode_text(PyramidFlowVideoTextEncode, clip)
    return PyramidFlowVideoPromptSchedule.execute(schedule=schedule, negative_prompt=NEGATIVE, add_quality_suffix=True,
                                                  clip=clip).result


def _extend(dit, positive, negative, seconds, **inputs):
    from pyramid_flow_pack.nodes.sampling import PyramidFlowVideoExtend

    steps = {f"video_steps_{i}": TINY[f"video_steps_{i}"] for i in (1, 2, 3)}
    return PyramidFlowVideoExtend.execute(model=dit, positive=positive, negative=negative, duration_seconds=seconds,
                                          guidance_scale=TINY["guidance_scale"],
                                          video_guidance_scale=TINY["video_guidance_scale"], seed=TINY["seed"],
                                          **steps, **inputs).result


def test_extending_a_sampler_latent_equals_one_longer_run(comfy_env):
    """Sampler 2 latent frames, then Extend by one (the same seed): the frames one 3-frame run gives, through the
    LATENT the sampler returns (its normalised copy travels with it); chained twice as well."""
    from pyramid_flow_pack.nodes.sampling import PyramidFlowVideoSampler

    dit, _ = _load_models(comfy_env)
    positive, negative = _text()
    run = dict(TINY, model=dit, positive=positive, negative=negative)
    longer = PyramidFlowVideoSampler.execute(**dict(run, duration_seconds=0.7)).result[0]  # 3 latent frames
    short = PyramidFlowVideoSampler.execute(**dict(run, duration_seconds=0.0)).result[0]  # 1 frame
    video, new, frames = _extend(dit, positive, negative, 1 / 3, video=short)
    video, new, frames = _extend(dit, positive, negative, 1 / 3, video=video)
    assert frames == 17 and video["samples"].shape == longer["samples"].shape and new["samples"].shape[2] == 1
    assert_within_ulps(video["samples"], longer["samples"], name="extended twice")  # the same code, by two routes


def test_extending_frames_encodes_them_and_continues(comfy_env):
    """The frames route (Extend with images + vae) continues exactly what VAE Encode of those frames gives as a
    latent: the history is the causal VAE's posterior mean of the frames. (A real VAE round trip is close to the
    original latent; the tiny random one is not, so that is not what this checks.)"""
    from pyramid_flow_pack.nodes.latent import PyramidFlowVideoVAEDecode, PyramidFlowVideoVAEEncode
    from pyramid_flow_pack.nodes.sampling import PyramidFlowVideoSampler

    dit, vae = _load_models(comfy_env)
    positive, negative = _text()
    latent = PyramidFlowVideoSampler.execute(**dict(TINY, model=dit, positive=positive, negative=negative,
                                                    duration_seconds=0.375)).result[0]  # 2 latent frames
    images = PyramidFlowVideoVAEDecode.execute(vae=vae, samples=latent, tile_size=0, tile_overlap=0.25,
                                               temporal_window=1)[0]
    assert images.shape[0] == 9
    from_frames, _, frames = _extend(dit, positive, negative, 1 / 3, images=images, vae=vae)
    encoded = PyramidFlowVideoVAEEncode.execute(vae=vae, images=images, tile_size=256, tile_overlap=0.25,
                                                temporal_window=2)[0]
    from_encoded, _, _ = _extend(dit, positive, negative, 1 / 3, video=encoded)
    assert frames == 17 and from_frames["samples"].shape == (1, 16, 3, 16, 16)
    assert_within_ulps(from_frames["samples"], from_encoded["samples"], name="frames route")


def test_prompt_schedule_conditions_by_time(comfy_env):
    from pyramid_flow_pack.nodes.sampling import PyramidFlowVideoSampler
    from pyramid_flow_pack.nodes.types import START_SECONDS_KEY

    positive, negative = _text("0: a red fox / 0.5: a blue fox / 1: a red fox")
    assert [entry[1][START_SECONDS_KEY] for entry in positive] == [0.0, 0.5, 1.0] and len(negative) == 1
    assert torch.equal(positive[0][0], positive[2][0]) and not torch.equal(positive[0][0], positive[1][0])
    dit, _ = _load_models(comfy_env)
    latent, frames = PyramidFlowVideoSampler.execute(**dict(TINY, model=dit, positive=positive[:2], negative=negative,
                                                             duration_seconds=0.7)).result
    first_only, _ = PyramidFlowVideoSampler.execute(**dict(TINY, model=dit, positive=positive[:1], negative=negative,
                                                           duration_seconds=0.7)).result
    assert frames == 17 and latent["samples"].shape[2] == 3
    # the second prompt starts at 0.5 s, in latent frame 2: frames 0-1 are the first prompt's run exactly (the same
    # code path), frame 2 is not
    assert torch.equal(latent["samples"][:, :, :2], first_only["samples"][:, :, :2])
    assert not torch.allclose(latent["samples"][:, :, 2:], first_only["samples"][:, :, 2:], atol=1e-3)
    with pytest.raises(ValueError, match="same latent frame"):  # 0.5 s and 0.6 s both fall in unit 2: refused
        _text("0: a red fox / 0.5: a blue fox / 0.6: a red fox")  # by the schedule node, before any encoding
    same_frame = positive[:2] + [[positive[2][0], {**positive[2][1], START_SECONDS_KEY: 0.6}]]
    with pytest.raises(ValueError, match="same latent frame"):  # and by the sampler, whoever built the list
        PyramidFlowVideoSampler.execute(**dict(TINY, model=dit, positive=same_frame, negative=negative,
                                               duration_seconds=0.7))


def test_text_to_image_with_the_image_dit(comfy_env):
    from pyramid_flow_pack.nodes.loaders import PyramidFlowVideoModelLoader
    from pyramid_flow_pack.nodes.sampling import PyramidFlowVideoSampler

    dit = PyramidFlowVideoModelLoader.execute(model="pyramid-flow-miniflux/diffusion_transformer_image",
                                              weight_dtype="fp32")[0]
    assert dit.model.checkpoint == "image"
    positive, negative = _text()
    latent, frames = PyramidFlowVideoSampler.execute(**dict(TINY, model=dit, positive=positive, negative=negative,
                                                             duration_seconds=0.0)).result
    assert frames == 1 and latent["samples"].shape == (1, 16, 1, 16, 16)
    with pytest.raises(ValueError, match="image DiT.*1 latent frame"):
        PyramidFlowVideoSampler.execute(**dict(TINY, model=dit, positive=positive, negative=negative))


@pytest.mark.parametrize("backend", ["attention_pytorch", "attention_split"])
def test_comfyui_attention_backends_give_the_same_video(comfy_env, monkeypatch, backend):
    """A DiT loaded by the pack runs attention through ComfyUI's optimized_attention (what --use-sage-attention and
    friends select). SDPA gets the key-padding mask; any other backend is called without one (per batch row, padded text
    keys left out): the latents agree within float rounding."""
    import comfy.ldm.modules.attention as comfy_attention

    dit, _ = _load_models(comfy_env)
    reference = _sample(comfy_env, dit)[0]["samples"]
    calls = []
    original = getattr(comfy_attention, backend)

    def spy(q, k, v, heads, mask=None, **kwargs):
        calls.append(mask is not None)
        return original(q, k, v, heads, mask=mask, **kwargs)

    monkeypatch.setattr(comfy_attention, backend, spy)
    monkeypatch.setattr(comfy_attention, "optimized_attention", spy)
    if backend == "attention_pytorch":
        monkeypatch.setattr(comfy_attention, "attention_pytorch", spy)
    dit, _ = _load_models(comfy_env)  # the backend is the model's, chosen when it loads
    latent = _sample(comfy_env, dit)[0]["samples"]
    assert calls and (any(calls) if backend == "attention_pytorch" else not any(calls))
    torch.testing.assert_close(latent, reference, rtol=1e-4, atol=1e-4)


def test_the_model_loader_lists_and_loads_a_training_checkpoint_folder(comfy_env, base_dir):
    """A checkpoint-N folder of the official training script (FSDP key names, EMA beside it) under
    models/pyramidflow/ is offered by the loader and loads the same weights; use_ema picks the EMA ones."""
    from safetensors.torch import save_file

    from pyramid_flow_pack.nodes.loaders import PyramidFlowVideoModelLoader
    from pyramid_flow_pack.pyramid_flow.loading.state_dict import load_state_dict

    original = load_state_dict(os.path.join(base_dir, "models", "pyramidflow", "pyramid-flow-miniflux",
                                            "diffusion_transformer_384p"))
    ema = {key: tensor * 0.5 for key, tensor in original.items()}
    folder = os.path.join(base_dir, "models", "pyramidflow", "checkpoint-1200")
    os.makedirs(folder, exist_ok=True)
    save_file({"_fsdp_wrapped_module." + key: tensor for key, tensor in original.items()},
              os.path.join(folder, "model.safetensors"))
    torch.save(ema, os.path.join(folder, "pytorch_model_ema.bin"))

    try:  # the base folder is the session's: other tests see its model lists
        schema = PyramidFlowVideoModelLoader.define_schema()
        assert "checkpoint-1200" in next(i for i in schema.inputs if i.id == "model").options
        for use_ema, expected in ((False, original), (True, ema)):
            dit = PyramidFlowVideoModelLoader.execute(model="checkpoint-1200", weight_dtype="fp32",
                                                      use_ema=use_ema)[0]
            state = dit.model.diffusion_model.state_dict()
            assert all(torch.equal(state[key], tensor) for key, tensor in expected.items())
    finally:
        shutil.rmtree(folder)


def test_validators_refuse_options_outside_the_lists_for_the_right_reason(comfy_env, base_dir):
    """validate_inputs of the nodes with combos, called as the queue calls them (both ComfyUI versions)."""
    from pyramid_flow_pack.nodes.conditioning import PyramidFlowVideoImageToVideo
    from pyramid_flow_pack.nodes.loaders import PyramidFlowVideoModelLoader, PyramidFlowVideoVAELoader
    from pyramid_flow_pack.nodes.sampling import PyramidFlowVideoExtend, PyramidFlowVideoSampler

    dit = PyramidFlowVideoModelLoader.validate_inputs
    assert dit(model="pyramid-flow-miniflux/diffusion_transformer_384p", weight_dtype="bf16") is True
    assert "fp16 gives black or NaN videos" in dit(model="pyramid-flow-miniflux/diffusion_transformer_384p",
                                                   weight_dtype="fp16")
    message = dit(model="pyramid-flow-miniflux", weight_dtype="bf16")
    assert "is a model repository folder, not a DiT" in message and "diffusion_transformer_384p" in message
    assert "not found" not in message and "download" not in message
    folder = os.path.join(base_dir, "models", "diffusion_models", "inprocess_folder.safetensors")
    os.makedirs(folder, exist_ok=True)
    try:
        assert "is a folder, not a weight file" in dit(model="inprocess_folder.safetensors", weight_dtype="bf16")
    finally:
        os.rmdir(folder)
    assert "'causal_video_vae_missing' not found" in PyramidFlowVideoVAELoader.validate_inputs(
        vae="causal_video_vae_missing", dtype="fp32")
    for node in (PyramidFlowVideoSampler, PyramidFlowVideoExtend):
        assert node.validate_inputs(noise="official") is True
        assert "'philox' is not an option of 'noise' (default, official)" in node.validate_inputs(noise="philox")
    assert "'squash' is not an option of 'resize_mode'" in PyramidFlowVideoImageToVideo.validate_inputs(
        resize_mode="squash")


def test_an_interrupted_sampler_queued_again_resumes_to_the_uninterrupted_result(comfy_env, monkeypatch):
    """Interrupted in latent frame 2 of 4, the same inputs again continue after the two finished frames (kept under
    ComfyUI's user directory, keyed by the inputs) and give the uninterrupted run's latent; the state is cleared."""
    import comfy.model_management as mm
    import folder_paths

    from pyramid_flow_pack.nodes import runtime
    from pyramid_flow_pack.nodes.conditioning import PyramidFlowVideoTextEncode
    from pyramid_flow_pack.nodes.sampling import PyramidFlowVideoSampler

    dit, _ = _load_models(comfy_env)
    positive, negative = encode_text(PyramidFlowVideoTextEncode, tiny_clip("flux"))
    inputs = dict(TINY, model=dit, positive=positive, negative=negative, seed=21, duration_seconds=1.0)
    reference = PyramidFlowVideoSampler.execute(**inputs).result[0]["samples"]
    root = os.path.join(folder_paths.get_user_directory(), runtime.RESUME_FOLDER)
    original, seen = runtime.step_callback, []

    def interrupting(device):
        callback = original(device)

        def wrapped(info):
            seen.append(info.unit)
            if info.unit == 2:
                mm.interrupt_current_processing(True)
            callback(info)

        return wrapped

    monkeypatch.setattr(runtime, "step_callback", interrupting)
    with pytest.raises(mm.InterruptProcessingException):
        PyramidFlowVideoSampler.execute(**inputs)
    states = [os.path.join(root, name) for name in os.listdir(root)]
    assert [len([f for f in os.listdir(s) if f.startswith("frame_")]) for s in states] == [2]
    seen.clear()

    def recording(device):
        callback = original(device)
        return lambda info: (seen.append(info.unit), callback(info))

    monkeypatch.setattr(runtime, "step_callback", recording)
    resumed = PyramidFlowVideoSampler.execute(**inputs).result[0]["samples"]
    assert set(seen) == {2, 3}  # only the frames the interruption lost were sampled again
    assert (resumed - reference).abs().max().item() <= 1e-6
    assert not os.path.exists(states[0])


def test_every_node_error_branch_names_the_problem(comfy_env):
    """Each refusal of the nodes, reached with the input that triggers it (the message names the input and the fix)."""
    from pyramid_flow_pack.nodes.conditioning import PyramidFlowVideoTextEncode
    from pyramid_flow_pack.nodes.latent import PyramidFlowVideoVAEDecode
    from pyramid_flow_pack.nodes.loaders import PyramidFlowVideoModelLoader, PyramidFlowVideoTextEncoderLoader
    from pyramid_flow_pack.nodes.sampling import PyramidFlowVideoExtend, PyramidFlowVideoSampler
    from pyramid_flow_pack.nodes.types import START_SECONDS_KEY

    dit, vae = _load_models(comfy_env)
    positive, negative = _text()
    sd3_positive, _ = encode_text(PyramidFlowVideoTextEncode, tiny_clip("sd3"))
    latent = {"samples": torch.zeros(1, 16, 2, 16, 16), "pyramid_flow_variant": "sd3"}
    sampler = dict(TINY, model=dit, positive=positive, negative=negative)
    extend = dict(model=dit, positive=positive, negative=negative, duration_seconds=0.4, video_steps_1=1,
                  video_steps_2=1, video_steps_3=1, guidance_scale=7.0, video_guidance_scale=5.0, seed=1)
    bare_clip = tiny_clip("flux")
    bare_clip.cond_stage_model.t5xxl = None
    core_conditioning = [[torch.zeros(1, 77, 32), {"pooled_output": torch.zeros(1, 32)}]]
    cases = [
        (PyramidFlowVideoSampler, dict(sampler, positive=sd3_positive),
         "The text conditioning (sd3 encoders: T5 32, pooled 80) does not fit this miniflux DiT"),
        (PyramidFlowVideoSampler, dict(sampler, positive=core_conditioning), "not made by 'Pyramid Flow Text Encode'"),
        (PyramidFlowVideoSampler, dict(sampler, positive=[]), "The positive conditioning is empty"),
        (PyramidFlowVideoSampler, dict(sampler, negative=negative + negative), "holds 2 prompts; it must be one prompt"),
        (PyramidFlowVideoSampler, dict(sampler, positive=positive + positive), "several prompts without times"),
        (PyramidFlowVideoSampler, dict(sampler, image_latent={"samples": torch.zeros(1, 4, 16, 16)}),
         "The input 'image_latent' has 4 channels"),
        (PyramidFlowVideoVAEDecode, dict(vae=vae, samples={"samples": torch.zeros(1, 4, 8, 8)}, tile_size=256,
                                         tile_overlap=0.25, temporal_window=1), "The input 'samples' has 4 channels"),
        (PyramidFlowVideoExtend, extend, "Connect exactly one video to continue"),
        (PyramidFlowVideoExtend, dict(extend, video=latent), "made with the sd3 model; this model is miniflux"),
        (PyramidFlowVideoExtend, dict(extend, video={"samples": torch.zeros(1, 16, 2, 9, 9)}),
         "The size 72x72 comes from 'video'"),
        (PyramidFlowVideoExtend, dict(extend, images=torch.rand(9, 64, 64, 3)), "'images' needs the 'vae' input"),
        (PyramidFlowVideoTextEncode, dict(prompt="a fox", negative_prompt=""), "Connect exactly one text encoder"),
        (PyramidFlowVideoTextEncode, dict(prompt="a fox", negative_prompt="", clip=bare_clip),
         "This CLIP lacks the text encoders Pyramid Flow needs"),
        (PyramidFlowVideoModelLoader, dict(model="no_such_dit.safetensors", weight_dtype="bf16"),
         "'no_such_dit.safetensors' not found"),
        (PyramidFlowVideoModelLoader, dict(model="pyramid-flow-miniflux/diffusion_transformer_384p",
                                           weight_dtype="fp16"), "fp16 gives black or NaN videos"),
        (PyramidFlowVideoTextEncoderLoader, dict(model_folder="pyramid-flow-sd3-broken", dtype="fp32"),
         "not found"),
    ]
    assert START_SECONDS_KEY not in positive[0][1]
    for node, inputs, message in cases:
        with pytest.raises((ValueError, TypeError, FileNotFoundError)) as err:
            node.execute(**inputs)
        assert message in str(err.value), (node.__name__, message, str(err.value))


def test_loader_device_inputs_place_the_models_and_refuse_devices_that_do_not_exist(comfy_env):
    """The optional device input of every loader: a named device is where the model loads and runs (the same
    video as ComfyUI's default choice, here both the CPU); a device the machine lacks is refused, at the queue and
    at run time, naming the devices it has."""
    from pyramid_flow_pack.nodes.loaders import PyramidFlowVideoModelLoader, PyramidFlowVideoVAELoader

    repo = "pyramid-flow-miniflux"
    dit, _ = _load_models(comfy_env)
    placed = PyramidFlowVideoModelLoader.execute(model=f"{repo}/diffusion_transformer_384p", weight_dtype="fp32",
                                                 device="cpu")[0]
    assert placed.load_device == torch.device("cpu") and placed.offload_device == torch.device("cpu")
    # bit-equal on purpose: the same loader, file, device and code path; only the device input's route differs
    assert torch.equal(_sample(comfy_env, placed)[0]["samples"], _sample(comfy_env, dit)[0]["samples"])
    from pyramid_flow_pack.nodes.devices import machine_devices

    message = f"Device 'cuda:7' does not exist on this machine, which has: {', '.join(machine_devices())}. Pick one"
    assert message in PyramidFlowVideoVAELoader.validate_inputs(vae=f"{repo}/causal_video_vae", dtype="fp32",
                                                                device="cuda:7")
    with pytest.raises(ValueError, match=message):
        PyramidFlowVideoVAELoader.execute(vae=f"{repo}/causal_video_vae", dtype="fp32", device="cuda:7")


def test_multigpu_node_runs_the_positive_half_on_a_second_device(comfy_env, monkeypatch):
    """'Pyramid Flow Multi-GPU' with a second device (stood in by cpu:0, a CPU device of another name): a copy of
    the DiT, loaded through load_models_gpu on that device, runs one half of every step at batch 1 and the video
    equals the one-device video within the golden tolerance; with one device the node changes nothing."""
    import comfy.model_management as mm

    from pyramid_flow_pack.nodes import devices
    from pyramid_flow_pack.nodes.model_patches import PyramidFlowVideoMultiGPU
    from pyramid_flow_pack.nodes.types import CFG_DEVICE_KEY

    dit, _ = _load_models(comfy_env)
    assert PyramidFlowVideoMultiGPU.execute(model=dit, max_gpus=2)[0] is dit  # one device: unchanged
    one_device = _sample(comfy_env, dit)[0]["samples"]
    monkeypatch.setattr(devices, "machine_devices", lambda: ["cpu:0", "cpu"])
    patched = PyramidFlowVideoMultiGPU.execute(model=dit, max_gpus=2)[0]
    assert patched.model_options[CFG_DEVICE_KEY] == "cpu:0"
    copy = dit.model.device_copies["cpu:0"]
    assert copy.load_device == torch.device("cpu:0") and copy.model is not dit.model
    batches = {"first": [], "second": []}
    for name, patcher in (("first", patched), ("second", copy)):
        patcher.model.diffusion_model.register_forward_pre_hook(
            lambda module, args, name=name: batches[name].append(args[0][-1].shape[0]))
    loaded = []
    original = mm.load_models_gpu
    monkeypatch.setattr(mm, "load_models_gpu", lambda models, **kwargs: (loaded.extend(models), original(models, **kwargs)))
    two_devices = _sample(comfy_env, patched)[0]["samples"]
    assert copy in loaded and patched in loaded
    assert batches["first"] == batches["second"] and set(batches["first"]) == {1} and len(batches["first"]) > 0
    assert (two_devices - one_device).abs().max().item() <= 1e-3  # the golden latent tolerance
