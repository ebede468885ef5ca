"""The main job end to end on the built-in tiny model: CLI, pipeline, video file."""

import os

import av
import pytest
import torch
from PIL import Image

from pyramid_flow import cli
from pyramid_flow.loading.state_dict import CheckpointError
from pyramid_flow.pipeline import PyramidFlowPipeline
from pyramid_flow.testing.tiny import build_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return build_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny")), "miniflux")


def test_tiny_checkpoint_is_deterministic(tmp_path, tiny_root):
    from pyramid_flow.loading.state_dict import load_state_dict

    again = build_tiny_checkpoint(str(tmp_path / "again"), "miniflux")
    for component in ("diffusion_transformer_384p", "causal_video_vae", "text_encoder_2"):
        names = sorted(os.listdir(os.path.join(tiny_root, component)))
        assert names == sorted(os.listdir(os.path.join(again, component)))
        first, second = (load_state_dict(os.path.join(root, component)) for root in (tiny_root, again))
        assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first), component


@pytest.mark.parametrize("variant", ["miniflux", "sd3"])
def test_tiny_pipeline_generates_frames(tmp_path, variant):
    root = build_tiny_checkpoint(str(tmp_path / variant), variant)
    pipe = PyramidFlowPipeline.from_pretrained(root)
    assert pipe.variant.name == variant and pipe.checkpoint == "384p"
    frames = pipe.generate("a cat", height=128, width=192, temp=2, num_inference_steps=1, video_num_inference_steps=1, seed=3)
    assert frames.shape == (9, 128, 192, 3) and frames.dtype == torch.uint8
    again = pipe.generate("a cat", height=128, width=192, temp=2, num_inference_steps=1, video_num_inference_steps=1, seed=3)
    assert torch.equal(frames, again)


def test_cli_writes_an_mp4_with_the_tiny_model(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(cli, "DEFAULT_MODEL_DIR", str(tmp_path / "models"))
    output = tmp_path / "out.mp4"
    code = cli.main(["a red panda", "--width", "128", "--height", "128", "--temp", "2", "--steps", "1",
                     "--video-steps", "1", "--output", str(output)])
    assert code == 0
    with av.open(str(output)) as container:  # the file decodes: 2 latent frames = 9 frames of 128x128 at 24 fps
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        assert len(frames) == 9 and frames[0].shape == (128, 128, 3) and float(stream.average_rate) == 24
    assert "TINY RANDOM-WEIGHT MODEL" in caplog.text  # no weights here: the fallback is announced


def test_cli_image_to_video_writes_pngs(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "DEFAULT_MODEL_DIR", str(tmp_path / "models"))
    image = tmp_path / "first.png"
    Image.new("RGB", (300, 200), (200, 50, 50)).save(image)
    frames_dir = tmp_path / "frames"
    cli.run(["a red square", "--image", str(image), "--tiny", "--width", "128", "--height", "64", "--temp", "2",
              "--video-steps", "1", "--output", str(frames_dir)])
    assert len(os.listdir(frames_dir)) == 9
    assert Image.open(frames_dir / "frame_00000.png").size == (128, 64)


def test_cli_rejects_a_bad_resolution_before_loading(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "resolve_model", lambda args: pytest.fail("model loaded before the size was checked"))
    with pytest.raises(ValueError, match="multiple of 64"):
        cli.run(["x", "--width", "100", "--output", str(tmp_path / "x.mp4")])


def test_cli_explicit_model_folder_that_is_missing_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="incomplete. Missing"):
        cli.run(["x", "--model", str(tmp_path / "nothing"), "--temp", "1", "--output", str(tmp_path / "x.mp4")])


def test_image_dit_asked_for_video_fails_before_any_work(tmp_path, monkeypatch):
    root = build_tiny_checkpoint(str(tmp_path / "img"), "miniflux", dit_folder="diffusion_transformer_image")
    pipe = PyramidFlowPipeline.from_pretrained(root)
    assert pipe.checkpoint == "image"
    monkeypatch.setattr(pipe, "encode_prompt", lambda *a, **k: pytest.fail("text encoded before the request was checked"))
    with pytest.raises(ValueError, match="image DiT"):
        pipe.generate("a cat", height=128, width=128, temp=4)


def test_official_noise_mode_is_selectable_by_name(tiny_root):
    pipe = PyramidFlowPipeline.from_pretrained(tiny_root)
    kwargs = dict(height=64, width=64, temp=2, num_inference_steps=1, video_num_inference_steps=1, seed=7, output_type="latent")
    official = pipe.generate("a cat", noise="official", **kwargs)
    assert torch.equal(official, pipe.generate("a cat", noise="official", **kwargs))
    assert not torch.equal(official, pipe.generate("a cat", **kwargs))  # the default source draws another stream
    with pytest.raises(ValueError, match="noise must be"):
        pipe.generate("a cat", noise="philox", **kwargs)


def test_offloading_moves_each_model_only_while_it_runs(tiny_root, monkeypatch):
    """Offload mode places a model on the compute device for its own step and back on the CPU after; the result
    is the same as with everything resident."""
    pipe = PyramidFlowPipeline.from_pretrained(tiny_root, offload=True)
    moves = []
    for name in ("dit", "vae", "text_encoder"):
        module = getattr(pipe, name)
        original = module.to

        def recording_to(*args, _name=name, _original=original, **kwargs):
            moves.append((_name, str(args[0])))
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, "to", recording_to)
    kwargs = dict(height=64, width=64, temp=2, num_inference_steps=1, video_num_inference_steps=1, seed=5)
    frames = pipe.generate("a cat", **kwargs)
    assert moves == [("text_encoder", "cpu"), ("text_encoder", "cpu"), ("dit", "cpu"), ("dit", "cpu"), ("vae", "cpu"), ("vae", "cpu")]
    resident = PyramidFlowPipeline.from_pretrained(tiny_root, offload=False)
    assert torch.equal(frames, resident.generate("a cat", **kwargs))  # on the CPU offloading moves nothing: same path


def _copy_tiny(tmp_path, tiny_root):
    import shutil

    target = tmp_path / "models" / "pyramid-flow-miniflux"
    shutil.copytree(tiny_root, target)
    return target


def test_a_broken_model_folder_is_an_error_not_a_tiny_fallback(tmp_path, monkeypatch, tiny_root):
    """The default model folder exists but its DiT weights are truncated: an error naming the file, no noise video."""
    monkeypatch.setattr(cli, "DEFAULT_MODEL_DIR", str(tmp_path / "models"))
    weights = _copy_tiny(tmp_path, tiny_root) / "diffusion_transformer_384p" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors.*truncated"):
        cli.run(["x", "--temp", "1", "--width", "64", "--height", "64", "--output", str(tmp_path / "x.mp4")])
    assert not (tmp_path / "x.mp4").exists()


def test_an_incomplete_model_folder_is_an_error_not_a_tiny_fallback(tmp_path, monkeypatch, tiny_root):
    import shutil

    monkeypatch.setattr(cli, "DEFAULT_MODEL_DIR", str(tmp_path / "models"))
    shutil.rmtree(_copy_tiny(tmp_path, tiny_root) / "causal_video_vae")
    with pytest.raises(CheckpointError, match="(?s)incomplete. Missing.*causal_video_vae"):
        cli.run(["x", "--temp", "1", "--width", "64", "--height", "64", "--output", str(tmp_path / "x.mp4")])


def _run(tmp_path, *args):
    return cli.main(["a red panda", "--tiny", "--width", "128", "--height", "64", "--steps", "1", "--video-steps", "1",
                     *args])


def test_decode_and_encode_show_progress(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "DEFAULT_MODEL_DIR", str(tmp_path / "models"))
    _run(tmp_path, "--temp", "3", "--output", str(tmp_path / "a.mp4"))
    err = capsys.readouterr().err
    assert "sampling" in err and "decoding" in err and "100%" in err
    _run(tmp_path, "--extend", str(tmp_path / "a.mp4"), "--temp", "1", "--output", str(tmp_path / "b.mp4"))
    assert "encoding" in capsys.readouterr().err


def test_extending_a_saved_latent_equals_one_longer_run(tmp_path, monkeypatch):
    """--save-latent, then --extend with it (the seed is stored): the latents of one longer run, exactly."""
    from pyramid_flow.video_io import load_latents

    monkeypatch.setattr(cli, "DEFAULT_MODEL_DIR", str(tmp_path / "models"))
    _run(tmp_path, "--temp", "4", "--seed", "9", "--output", str(tmp_path / "long.mp4"),
         "--save-latent", str(tmp_path / "long.safetensors"))
    _run(tmp_path, "--temp", "2", "--seed", "9", "--output", str(tmp_path / "short"),
         "--save-latent", str(tmp_path / "short.safetensors"))
    _run(tmp_path, "--extend", str(tmp_path / "short.safetensors"), "--temp", "2", "--output", str(tmp_path / "more.mp4"),
         "--save-latent", str(tmp_path / "more.safetensors"))
    longer, meta = load_latents(str(tmp_path / "long.safetensors"))
    extended, _ = load_latents(str(tmp_path / "more.safetensors"))
    assert meta["seed"] == "9" and meta["variant"] == "miniflux" and longer.shape[2] == 4
    assert torch.equal(extended, longer)  # the same sampler code, keyed noise, float32 files: bit for bit
    assert len(os.listdir(tmp_path / "short")) == 9


def test_extending_an_mp4_and_a_prompt_schedule(tmp_path, monkeypatch):
    import av

    monkeypatch.setattr(cli, "DEFAULT_MODEL_DIR", str(tmp_path / "models"))
    schedule = tmp_path / "schedule.txt"
    schedule.write_text("0: a red panda on a log\n0.5: the red panda jumps into the snow\n", encoding="utf-8")
    _run(tmp_path, "--temp", "3", "--prompt-schedule", str(schedule), "--output", str(tmp_path / "a.mp4"))
    _run(tmp_path, "--extend", str(tmp_path / "a.mp4"), "--duration", "0.6", "--history-window", "2",
         "--prompt-schedule", "0: a fox / 0.9: a cat", "--output", str(tmp_path / "b.mp4"))
    with av.open(str(tmp_path / "b.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 17 + 16  # 17 given + 2 latent frames of 8


@pytest.mark.long
def test_a_30_second_384p_video_with_a_history_window(tmp_path, monkeypatch):
    """Beyond the trained 10 s with a bounded history: the whole video is written (tiny model, one step)."""
    import av

    monkeypatch.setattr(cli, "DEFAULT_MODEL_DIR", str(tmp_path / "models"))
    output = tmp_path / "long.mp4"
    assert cli.main(["a red panda", "--tiny", "--duration", "30", "--history-window", "8", "--steps", "1",
                     "--video-steps", "1", "--output", str(output)]) == 0
    with av.open(str(output)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (640, 384)
        assert sum(1 for _ in container.decode(stream)) == 721


def test_latent_frames_is_the_flag_and_temp_its_official_alias():
    parser = cli.build_parser()
    assert parser.parse_args(["x", "--latent-frames", "3"]).latent_frames == 3
    assert parser.parse_args(["x", "--temp", "3"]).latent_frames == 3
    assert "latent frames" in parser.format_help()
