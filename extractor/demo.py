"""The embedded demo: a generated sample video and a small random-weights checkpoint.

Its features are meaningless (random weights); it exists to show the whole pipeline
running on a fresh machine without downloading anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .model import LlavaViT, ViTConfig

DEMO_CONFIG = ViTConfig(patch_size=16, width=192, layers=2, head_dim=64, mlp_width=768, norm="layer_norm")


def synthetic_frame(i: int, height: int, width: int) -> np.ndarray:
    """A moving colour pattern, different in every frame (uint8 RGB)."""
    y, x = np.mgrid[0:height, 0:width]
    r = (x + 4 * i) % 256
    g = (y + 2 * i) % 256
    b = ((x // 16 + y // 16 + i) % 2) * 200 + 25
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def write_video(path: Path, num_frames: int, width: int = 320, height: int = 240, fps: int = 30,
                codec: str = "libx264", pix_fmt: str = "yuv420p") -> Path:
    """Writes a small test/demo video with PyAV."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(i, height, width), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def random_checkpoint(path: Path, cfg: ViTConfig = DEMO_CONFIG, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(LlavaViT(cfg).state_dict(), path)
    return path


def prepare_demo(root: Path) -> tuple[Path, Path, Path]:
    """(videos folder, checkpoint, features folder) under root, made if missing."""
    videos, ckpt, features = root / "videos", root / "demo_random_weights.pt", root / "features"
    if not (videos / "sample_demo.mp4").exists():
        write_video(videos / "sample_demo.mp4", num_frames=96)
    if not ckpt.exists():
        random_checkpoint(ckpt)
    return videos, ckpt, features
