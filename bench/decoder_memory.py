"""Resident memory of a decoder whose consumer is slower than it (as when the GPU is the
bottleneck): decode a video's frames in chunks, sleeping after each chunk, and print the
process's resident memory as it goes. A bounded decoder stays flat."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from extractor.video import DecordDecoder, VideoDecoder, clip_starts, needed_frames  # noqa: E402


def resident_mib() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * 4096 // 2**20


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("video", type=Path)
    ap.add_argument("--decoder", choices=["cpu", "decord"], default="cpu")
    ap.add_argument("--sleep", type=float, default=0.05, help="seconds the consumer spends per chunk")
    ap.add_argument("--stride", type=int, default=16)
    a = ap.parse_args()
    dec = (DecordDecoder if a.decoder == "decord" else VideoDecoder)(a.video, 4)
    n = dec.info.num_frames
    peak = start = resident_mib()
    for i, (idx, frames) in enumerate(dec.chunks(needed_frames(clip_starts(n, 16, a.stride), 16, n), 10)):
        time.sleep(a.sleep)
        peak = max(peak, resident_mib())
        if i % 50 == 0:
            print(f"{a.decoder}: frame {idx[0]:6d} resident {resident_mib()} MiB", flush=True)
    print(f"{a.decoder}: {n} frames of {dec.info.width}x{dec.info.height}: resident {start} MiB at start, "
          f"peak {peak} MiB")
