"""DINOv3 through the same pipeline: a tiny randomly initialised model saved by the test."""

import json

import numpy as np
import pytest
import torch

from conftest import run_cli, tiny_args

transformers = pytest.importorskip("transformers")
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


@pytest.fixture(scope="module")
def dinov3_folder(tmp_path_factory):
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    folder = tmp_path_factory.mktemp("dinov3_tiny")
    config = DINOv3ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                             patch_size=16, image_size=64, num_register_tokens=2)
    torch.manual_seed(0)
    DINOv3ViTModel(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"height": 64, "width": 96}, "image_mean": MEAN, "image_std": STD, "do_normalize": True}))
    return folder


def dinov3_args(data, save, folder, *extra):
    argv = tiny_args(data, save, "--model_type", "dinov3", *extra)
    argv[argv.index("--ckpt_path") + 1] = folder
    return argv


def reference_features(video, folder, clip_len=16, stride=4):
    """Frames decoded with decord, preprocessed as the processor config says, the model
    called directly per frame, pooler output averaged over each clip."""
    import decord
    import torch.nn.functional as F
    from transformers import DINOv3ViTModel

    model = DINOv3ViTModel.from_pretrained(str(folder)).eval()
    vr = decord.VideoReader(str(video))
    frames = torch.from_numpy(vr.get_batch(list(range(len(vr)))).asnumpy()).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(frames, size=(64, 96), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        per_frame = model(pixel_values=x).pooler_output
    starts = list(range(0, len(vr) - clip_len + 1, stride))
    return torch.stack([per_frame[s:s + clip_len].mean(0) for s in starts]).numpy()


def test_dinov3_end_to_end_matches_the_model_called_directly(video_dir, dinov3_folder, tmp_path):
    res = run_cli(*dinov3_args(video_dir, tmp_path / "out", dinov3_folder))
    assert res.returncode == 0, res.stderr
    assert "resize 64x96 antialiased" in res.stdout and "preprocessor_config.json" in res.stdout
    feats = np.load(tmp_path / "out" / "long_one.npy")
    ref = reference_features(video_dir / "long_one.mp4", dinov3_folder)
    assert feats.shape == (7, 64) == ref.shape
    assert np.linalg.norm(feats - ref) / np.linalg.norm(ref) < 1e-5
    assert np.load(tmp_path / "out" / "short one.npy").shape == (1, 64)


def test_dinov3_bad_folders_exit_2(video_dir, dinov3_folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_cli(*dinov3_args(video_dir, tmp_path / "o1", empty))
    assert res.returncode == 2 and "not a Hugging Face model folder" in res.stderr

    broken = tmp_path / "broken"
    broken.mkdir()
    config = json.loads((dinov3_folder / "config.json").read_text())
    config["num_hidden_layers"] = 3  # the weights have 2 layers
    (broken / "config.json").write_text(json.dumps(config))
    (broken / "model.safetensors").write_bytes((dinov3_folder / "model.safetensors").read_bytes())
    res = run_cli(*dinov3_args(video_dir, tmp_path / "o2", broken))
    assert res.returncode == 2 and "do not fit" in res.stderr and "Traceback" not in res.stderr
