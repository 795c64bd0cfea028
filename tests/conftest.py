import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(ROOT))

from extractor.demo import write_video  # noqa: E402

TINY_CKPT = FIXTURES / "llava_vit" / "tiny_t4_64px.ckpt.pt"  # width 128, 2 layers, keys prefixed module.
HF_TINY = FIXTURES / "onevision_encoder_hf" / "tiny"


def run_cli(*args, timeout=300):
    """Runs feat_extraction.py in a fresh interpreter; returns CompletedProcess (text)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    cmd = [sys.executable, str(ROOT / "feat_extraction.py"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def tiny_args(data, save, *extra):
    """Common flags: tiny checkpoint, the charades preset, CPU."""
    return ["--data_set", "charades", "--data_path", data, "--save_path", save, "--ckpt_path", TINY_CKPT,
            "--model_name", "auto", "--device", "cpu", "--batch_clips", "8", *extra]


def write_audio_only(path: Path, seconds: float = 1.0):
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        samples = int(16000 * seconds)
        frame_size = stream.codec_context.frame_size or 1024
        t = 0
        while t < samples:
            chunk = np.zeros((1, frame_size), dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, t
            for packet in stream.encode(frame):
                container.mux(packet)
            t += frame_size
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory):
    """Two good videos: 40 frames (7 charades clips) and 10 frames (shorter than one clip)."""
    d = tmp_path_factory.mktemp("videos")
    write_video(d / "long_one.mp4", 40, width=96, height=64)
    write_video(d / "short one.mp4", 10, width=80, height=48)
    return d


def original_clip_features(video: Path, model, clip_len: int, stride: int, normalize: bool = False,
                           t_pos=None) -> np.ndarray:
    """The original script's per-clip path: decord get_batch per clip, float/255, bilinear
    resize to 224 (then CLIP mean/std if asked), the model in fp32."""
    from extractor.backbones import CLIP_MEAN, CLIP_STD

    import decord
    import torch.nn.functional as F

    vr = decord.VideoReader(str(video), ctx=decord.cpu(0))
    n = len(vr)
    starts = list(range(0, n - clip_len + 1, stride)) or [0]
    rows = []
    for s in starts:
        idx = [min(s + k, n - 1) for k in range(clip_len)]
        frames = torch.from_numpy(vr.get_batch(idx).asnumpy())  # (T, H, W, 3)
        x = frames.permute(3, 0, 1, 2).float() / 255.0  # (3, T, H, W)
        x = F.interpolate(x.permute(1, 0, 2, 3), size=(224, 224), mode="bilinear", align_corners=False)
        if normalize:
            x = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        with torch.no_grad():
            rows.append(model(x.permute(1, 0, 2, 3).unsqueeze(0), t_pos)["head_output"][0])
    return torch.stack(rows).numpy()
