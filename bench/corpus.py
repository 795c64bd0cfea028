"""Generated benchmark videos: H.264, a moving textured scene (so that the encoder spends
real bits and the decoder real work), sizes like the datasets' own.

charades-like: 640x480, 30 fps; hacs-like: 1280x720, 30 fps. PyAV writes them (OpenCV's
writer is the fallback where PyAV is missing, with MPEG-4 part 2, which decodes faster)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

KINDS = {"charades": (640, 480), "hacs": (1280, 720)}


def textured_frames(num_frames: int, width: int, height: int, seed: int):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 4, width // 4, 3), dtype=np.uint8)
    texture = coarse.repeat(8, axis=0).repeat(8, axis=1)  # 8x8 blocks: detail a codec can keep
    y, x = np.mgrid[0:height, 0:width]
    for i in range(num_frames):
        dy, dx = (3 * i) % height, (5 * i) % width  # global motion over a noisy texture
        frame = texture[dy:dy + height, dx:dx + width].copy()
        frame[..., 0] = (frame[..., 0] // 2 + ((x + 4 * i) % 256) // 2).astype(np.uint8)
        cy, cx = int(height / 2 + height / 3 * np.sin(i / 20)), int(width / 2 + width / 3 * np.cos(i / 25))
        frame[max(0, cy - 40):cy + 40, max(0, cx - 40):cx + 40] = (255, 255 - i % 256, 0)
        yield frame


def write(path: Path, num_frames: int, width: int, height: int, fps: int = 30, seed: int = 0, crf: int = 26):
    try:
        import av
    except ImportError:
        return _write_cv2(path, num_frames, width, height, fps, seed)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": str(crf), "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in textured_frames(num_frames, width, height, seed):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _write_cv2(path: Path, num_frames: int, width: int, height: int, fps: int, seed: int):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in textured_frames(num_frames, width, height, seed):
        writer.write(frame[..., ::-1])
    writer.release()
    return path


def make_corpus(out: Path, kind: str, count: int, seconds: float, fps: int = 30) -> list[Path]:
    """`count` videos of `seconds` each, written in parallel processes (kept if present)."""
    from concurrent.futures import ProcessPoolExecutor

    out.mkdir(parents=True, exist_ok=True)
    width, height = KINDS[kind]
    paths = [out / f"{kind}_{i:03d}.mp4" for i in range(count)]
    todo = [(p, i) for i, p in enumerate(paths) if not p.exists()]
    with ProcessPoolExecutor(max_workers=max(1, min(len(todo), 8))) as pool:
        list(pool.map(_write_one, [(p, int(seconds * fps), width, height, fps, i) for p, i in todo]))
    return paths


def _write_one(args):
    return write(*args[:5], seed=args[5])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("--kind", choices=KINDS, default="charades")
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=30)
    a = ap.parse_args()
    for p in make_corpus(a.out, a.kind, a.count, a.seconds):
        print(p, p.stat().st_size)
