"""Memory of the CPU decoder processes (bench/run.py --stages decoder_memory): a worker's
frame source with N processes decoding 720p copies of the source video, each chunk given
back as it arrives, and the processes' proportional set size (a shared buffer counts once)
sampled for a while: what each decoder process adds to a worker's peak memory. Runs on
the CPU as on a GPU machine."""

from __future__ import annotations

import queue
import subprocess
import sys
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]
from ceilings import modelless_source  # noqa: E402
from extractor.decode.plan import DecodePlan  # noqa: E402

BUILD = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; import corpus; "
         "corpus.from_video(Path(sys.argv[2]), 'hacs', int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))")


def peak_pss(videos: list[Path], processes: int, seconds: float) -> int:
    """The decoder processes' largest summed proportional set size, in bytes, over `seconds`
    (or until the videos are decoded)."""
    plan = DecodePlan(cpu_decoders=processes, nvdec_sessions=0, cpu_budget=processes, segment_frames=0)
    source = modelless_source(videos, plan, 16, 16, torch.device("cpu"))
    peak, t0 = 0, time.monotonic()
    try:
        while time.monotonic() - t0 < seconds:
            try:
                event = source.queue.get(timeout=0.2)
            except queue.Empty:
                event = (None,)
            if event[0] == "frames":
                event[3].discard()
            peak = max(peak, source.pss_bytes())
            if event[0] in ("exit", "fatal"):
                break
    finally:
        source.close()
    return peak


def run_decoder_memory(work: Path, source: Path, say=print, counts=(1, 4), copies: int = 4, frames: int = 300,
                       seconds: float = 25.0) -> dict:
    data = work / "decoder_memory"
    res = subprocess.run([sys.executable, "-c", BUILD, str(BENCH), str(data), str(copies), str(frames), str(source)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"decoder_memory corpus failed: {res.stderr[-3000:]}")
    videos = sorted(data.glob("hacs_[0-9]*.mp4"))
    out = {}
    for n in counts:
        peak = peak_pss(videos, n, seconds)
        out[n] = {"processes": n, "peak_mib": round(peak / 2**20, 1), "per_process_mib": round(peak / n / 2**20, 1)}
        say(f"  {n} decoder processes on {len(videos)} x {frames} frames of 720p: peak {out[n]['peak_mib']:.0f} MiB "
            f"(proportional set size, buffers included) = {out[n]['per_process_mib']:.0f} MiB each")
    return out
