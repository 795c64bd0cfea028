import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(ROOT))

from extractor.demo import write_video  # noqa: E402
from reference import write_models  # noqa: E402

MODELS = Path(tempfile.mkdtemp(prefix="extractor-test-models-"))  # rebuilt from seeds for each session
atexit.register(shutil.rmtree, MODELS, ignore_errors=True)
write_models(MODELS)
TINY_CKPT = MODELS / "tiny_t4_64px.ckpt.pt"  # width 128, 2 layers, keys prefixed module.
HF_TINY = MODELS / "onevision_encoder_hf_tiny"


def cli_env(**extra) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2", **extra}


def cli_command(*args) -> list:
    return [sys.executable, str(ROOT / "feat_extraction.py"), *map(str, args)]


def run_cli(*args, timeout=300, env=None, preexec_fn=None):
    """Runs feat_extraction.py in a fresh interpreter; returns CompletedProcess (text)."""
    return subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=timeout,
                          env=env or cli_env(), cwd=ROOT, preexec_fn=preexec_fn)


def without_permission_override():
    """preexec_fn: the child cannot read past file permissions even as root (drops
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set before exec), so that
    a chmod 000 file is unreadable in the test whoever runs it."""
    import ctypes

    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "cannot drop file-permission capabilities")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_frames(path: Path, frames, fps: int = 30, codec: str = "libx264", pix_fmt: str = "yuv420p",
                 pts_ms=None, rotation: int = 0, options: Optional[dict] = None):
    """Encodes uint8 RGB frames (n, H, W, 3) with PyAV: optional per-frame timestamps in
    milliseconds (a variable frame rate), a display rotation (degrees counterclockwise) and
    encoder options (such as the keyframe interval)."""
    import fractions

    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        if pts_ms is not None:
            stream.codec_context.time_base = fractions.Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = int(pts_ms[i]), fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def synthetic_frames(n: int, height: int, width: int) -> np.ndarray:
    from extractor.demo import synthetic_frame

    return np.stack([synthetic_frame(i, height, width) for i in range(n)])


def claimed_videos(conn, data_path: Path):
    """A simulated worker's claims over the workers' protocol: (name, file size) until the
    queue is empty."""
    while True:
        conn.send(("claim",))
        reply = conn.recv()
        if reply is None:
            return
        name = reply[0]
        yield name, (data_path / name).stat().st_size


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
