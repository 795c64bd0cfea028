"""Benchmark videos, sizes like the datasets' own: charades-like 640x480, hacs-like
1280x720, 30 fps, H.264.

Two sources, because they decode at very different speeds: a real video
(`from_video`: bench/media/bigbuckbunny_720p.mp4 by default, scaled, looped and
re-encoded; how the benchmark builds its corpora) and synthetic texture (`make_corpus`: a
moving noisy scene on which the encoder spends many bits, so its decoding is slower than
real content's). PyAV writes them (OpenCV's writer is the fallback where PyAV is missing,
with MPEG-4 part 2, which decodes faster)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

KINDS = {"charades": (640, 480), "hacs": (1280, 720)}
# What real footage of that size is tagged with: SD as BT.601 (the default, left untagged),
# HD as BT.709, so that both colour conversions are exercised.
HD_TAGS = {"colorspace": 1, "color_primaries": 1, "color_trc": 1}
SOURCE = Path(__file__).resolve().parent / "media" / "bigbuckbunny_720p.mp4"


def from_video(out: Path, kind: str, copies: int, frames: int = 1000, source: Path = SOURCE, fps: int = 30,
               crf: int = 23, preset: str = "medium") -> list[Path]:
    """`copies` files of one encoding of `source`, scaled to the kind's size and looped to
    `frames` frames (H.264, crf 23, BT.709-tagged when HD). Kept if present."""
    import shutil

    import av

    out.mkdir(parents=True, exist_ok=True)
    width, height = KINDS[kind]
    master = out / "master" / f"{kind}_{source.stem}_{frames}.mp4"  # a subfolder: not one of the corpus
    if not master.exists():
        master.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(source)) as src:
            scaled = [f.reformat(width, height, "yuv420p", interpolation="BICUBIC").to_ndarray()
                      for f in src.decode(video=0)]
        tmp = master.with_suffix(".tmp.mp4")
        with av.open(str(tmp), mode="w") as container:
            stream = container.add_stream("libx264", rate=fps, options={"crf": str(crf), "preset": preset})
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for name, value in (HD_TAGS if height >= 720 else {}).items():
                setattr(stream.codec_context, name, value)
            for i in range(frames):
                frame = av.VideoFrame.from_ndarray(scaled[i % len(scaled)], format="yuv420p")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        tmp.rename(master)
    paths = [out / f"{kind}_{i:03d}.mp4" for i in range(copies)]
    for p in paths:
        if not p.exists():
            shutil.copyfile(master, p)
    return paths


def cut(master: Path, out: Path, seconds: float) -> Path:
    """The first `seconds` of `master` (to the keyframe at or after them), stream-copied: no
    re-encoding, so a corpus of many lengths costs one encoding."""
    import av

    if out.exists():
        return out
    tmp = out.with_suffix(".tmp.mp4")
    with av.open(str(master)) as src, av.open(str(tmp), mode="w") as dst:
        stream = src.streams.video[0]
        copy = dst.add_stream_from_template(stream)
        for packet in src.demux(stream):
            if packet.dts is None:
                continue
            if packet.is_keyframe and packet.pts is not None and float(packet.pts * stream.time_base) >= seconds:
                break
            packet.stream = copy
            dst.mux(packet)
    tmp.rename(out)
    return out


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
    ap.add_argument("--seconds", type=float, default=30, help="synthetic: seconds per video")
    ap.add_argument("--source", type=Path, help="a real video to scale, loop and re-encode (1000 frames)")
    a = ap.parse_args()
    paths = from_video(a.out, a.kind, a.count, source=a.source) if a.source else \
        make_corpus(a.out, a.kind, a.count, a.seconds)
    for p in paths:
        print(p, p.stat().st_size)
