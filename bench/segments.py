"""NVDEC segments against the CPU decoder (bench/run.py --stages segments): encodings that
keep decoder state across frames in different ways (B-pyramids, open GOPs, HEVC, a variable
frame rate, a display rotation, Matroska, which NVDEC declines), cut from the benchmark's
source video. Each is extracted twice in fp32 with a tiny random model, which any frame
taken for its neighbour changes visibly: decoded in segments of 60 frames by NVDEC
sessions (`--decoder nvdec`: whatever NVDEC declines or cannot finish goes to a CPU
process), and whole by the CPU decoder (`--decoder cpu --segment_frames 0`). The features
must agree to the model's run-to-run noise."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


BENCH = Path(__file__).resolve().parent
FRAMES = 360
ENCODINGS = {  # name: (codec, options, rotation, variable frame rate)
    "closed_bpyramid.mp4": ("libx264", {"g": "48", "bf": "3", "b_strategy": "0"}, 0, False),
    "open_gop.mp4": ("libx264", {"x264-params": "keyint=48:open-gop=1:bframes=3:b-pyramid=normal"}, 0, False),
    "hevc_open_gop.mp4": ("libx265", {"x265-params": "keyint=48:open-gop=1:bframes=4:log-level=error"}, 0, False),
    "vfr.mp4": ("libx264", {"g": "48", "bf": "2"}, 0, True),
    "rotated.mp4": ("libx264", {"g": "48", "bf": "2"}, -90, False),
    "closed.mkv": ("libx264", {"g": "48", "bf": "3"}, 0, False),
}

WRITE = r'''
import sys, fractions, json
import av, numpy as np
from pathlib import Path
out, source, frames, encodings = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
out.mkdir(parents=True, exist_ok=True)
pictures = []
with av.open(source) as src:
    for frame in src.decode(video=0):
        pictures.append(frame.to_ndarray(format="rgb24", width=640, height=360))
        if len(pictures) == frames:
            break
pictures = (pictures * (frames // len(pictures) + 1))[:frames]  # looped: the source is short
gaps = np.random.default_rng(0).integers(20, 60, len(pictures))
for name, (codec, options, rotation, vfr) in encodings.items():
    with av.open(str(out / name), mode="w") as container:
        stream = container.add_stream(codec, rate=30, options=options)
        stream.height, stream.width, stream.pix_fmt = 360, 640, "yuv420p"
        if vfr:
            stream.codec_context.time_base = fractions.Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for i, rgb in enumerate(pictures):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if vfr:
                frame.pts, frame.time_base = int(np.cumsum(gaps)[i] - gaps[0]), fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
'''


def run_segments(work: Path, source: Path, logs: Path, say=print) -> dict:
    import json

    from cli import run_cli
    from fidelity import compare

    from extractor.demo import random_checkpoint
    from extractor.model import ViTConfig

    data = work / "segments"
    res = subprocess.run([sys.executable, "-c", WRITE, str(data), str(source), str(FRAMES), json.dumps(ENCODINGS)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": res.stderr[-3000:]}
    ckpt = random_checkpoint(work / "segments_tiny.pt", ViTConfig(patch_size=16, width=64, layers=2, head_dim=32,
                                                                    mlp_width=128))
    import torch

    segmented = ["--decoder", "nvdec", "--nvdec_sessions", "4"] if torch.cuda.is_available() else \
        ["--decoder", "cpu", "--device", "cpu"]  # without a GPU: the CPU's segments (a smoke test)
    runs = {"cpu_whole": ["--decoder", "cpu", "--segment_frames", "0"],
            "nvdec_segments": [*segmented, "--segment_frames", "60"]}
    out = {}
    for name, flags in runs.items():
        out[name] = run_cli(data, work / f"segments_{name}", ckpt, "charades", ["--dtype", "fp32", *flags], False,
                            logs / f"segments_{name}.log")
        if "error" in out[name]:
            say(f"  segments {name} FAILED: {out[name]['error']}")
            return out
    log = (logs / "segments_nvdec_segments.log").read_text(errors="replace")
    out["worker"] = [line for line in log.splitlines() if line.startswith("[R") and
                     ("] worker:" in line or "NVDEC stopped" in line)]
    decoders = dict(re.findall(r"\] (\S+): \d+ clips .*decode \(([\w+]+)\)", log))
    notes = {}
    for line in (work / "segments_nvdec_segments" / "manifest.jsonl").read_text().splitlines():
        entry = json.loads(line)
        notes[entry["video"]] = entry.get("decoder_note", "")
    out["per_video"] = {}
    for video in sorted(ENCODINGS):
        stem = Path(video).stem
        single = work / "segments_one"
        single.mkdir(exist_ok=True)
        for f in single.glob("*.npy"):
            f.unlink()
        (single / f"{stem}.npy").write_bytes((work / "segments_cpu_whole" / f"{stem}.npy").read_bytes())
        c = compare(work / "segments_nvdec_segments", single)
        out["per_video"][video] = {**c, "decoder": decoders.get(video, "?"), "note": notes.get(video, "")}
        say(f"  segments {video:20s}: per-clip cosine min {c['cos_min']:.7f}, relative error max "
            f"{c['rel_err_max']:.2e} ({c['clips']} clips, decoded by {decoders.get(video, '?')}: "
            f"{notes.get(video, '')})")
    say("  segments: " + " | ".join(out["worker"]))
    return out
