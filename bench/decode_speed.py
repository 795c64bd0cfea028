"""Decoding alone: frames per second of VideoDecoder over a corpus, with N videos decoded at
once in threads (as the pipeline does) or in processes (no shared GIL), to tell whether the
CPU or the GIL bounds the data path."""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import make_corpus  # noqa: E402
from extractor.video import DecordDecoder, NvdecDecoder, VideoDecoder, clip_starts, needed_frames  # noqa: E402

DECODERS = {"cpu": lambda path, threads: VideoDecoder(path, threads),
            "decord": lambda path, threads: DecordDecoder(path, threads),
            "nvdec": lambda path, threads: NvdecDecoder(path, 0)}


def decode_one(args) -> int:
    path, threads, stride, pin, decoder = args
    dec = DECODERS[decoder](Path(path), threads)
    n = 0
    for _, frames in dec.chunks(needed_frames(clip_starts(dec.info.num_frames, 16, stride), 16,
                                              dec.info.num_frames), 32):
        if pin:
            import torch

            torch.from_numpy(frames).pin_memory()
        n += len(frames)
    return n


def measure(videos, workers: int, threads: int, stride: int, kind: str, pin: bool, decoder: str) -> float:
    """kind: threads or processes; nvdec always runs in threads."""
    pool = (ProcessPoolExecutor if kind == "processes" else ThreadPoolExecutor)(max_workers=workers)
    t0 = time.perf_counter()
    with pool:
        frames = sum(pool.map(decode_one, [(str(v), threads, stride, pin, decoder) for v in videos]))
    return frames / (time.perf_counter() - t0)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("work", type=Path)
    ap.add_argument("--kind", default="hacs", choices=["charades", "hacs"])
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--grid", default="threads:1x1,threads:4x1,threads:8x1,threads:16x1,threads:8x2,"
                                      "processes:8x1,processes:16x1,threads:16x1pin",
                    help="comma-separated kind:VIDEOSxTHREADS[pin], kind = threads, processes or nvdec")
    ap.add_argument("--decoder", choices=list(DECODERS), default="cpu", help="decoder of the threads/processes runs")
    a = ap.parse_args()
    if any(item.startswith("nvdec") for item in a.grid.split(",")) or a.decoder == "nvdec":
        import PyNvVideoCodec  # noqa: F401  (before threads; and decord must not load beside it)
    videos = make_corpus(a.work / a.kind, a.kind, a.count, a.seconds)
    stride = 4 if a.kind == "charades" else 16
    for item in a.grid.split(","):
        kind, spec = item.split(":")
        pin = spec.endswith("pin")
        workers, threads = map(int, spec.removesuffix("pin").split("x"))
        decoder = "nvdec" if kind == "nvdec" else a.decoder
        fps = measure(videos, workers, threads, stride, kind, pin, decoder)
        print(f"{a.kind} {decoder:6s} {kind:9s} {workers:2d} videos x {threads} threads{' +pin' if pin else ''}: "
              f"{fps:7.0f} frames/s = {fps / 16 * (16 / stride):6.1f} clips/s at stride {stride}", flush=True)
