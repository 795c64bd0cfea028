"""NVDEC's frames against FFmpeg's, byte for byte (bench/run.py --stages nvdec_frames, on a
GPU): closed-GOP H.264 with B-pyramids, x264 open-gop and HEVC with CRA pictures, 360
frames each (bench/segments.py's encodings). For each file: every frame of a decoding from
the start (the Y, U and V planes of NVDEC's NV12 surfaces against PyAV's planes), then 40
frames after a seek from each keyframe (decode.nvdec.segment_batches, as NVDEC sessions
decode segments), and NVDEC's timestamp of frame 0 against the container's. The frames
that differ are listed by number; the keyframes' NAL unit types tell IDR (5; HEVC 19/20)
from open-GOP random access points (1 with a recovery point SEI 6; HEVC CRA 21)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
NAMES = ["closed_bpyramid.mp4", "open_gop.mp4", "hevc_open_gop.mp4"]
FRAMES, HEIGHT, WIDTH = 360, 360, 640

# In a child process: PyAV's FFmpeg must not be loaded beside PyNvVideoCodec's.
REFERENCE = r'''
import sys, json, hashlib, numpy as np
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import av
from extractor.decode.readers import frame_index, plane_array
out = {}
for p in sys.argv[3:]:
    hashes, keynals = [], []
    with av.open(p) as c:
        for f in c.decode(video=0):
            h, w = f.height, f.width
            planes = (plane_array(f.planes[0], h, w), plane_array(f.planes[1], h // 2, w // 2),
                      plane_array(f.planes[2], h // 2, w // 2))
            hashes.append([hashlib.md5(np.ascontiguousarray(a).tobytes()).hexdigest() for a in planes])
    index, why = frame_index(Path(p), len(hashes))
    with av.open(p) as c:
        h264 = c.streams.video[0].codec_context.name == "h264"
        for packet in c.demux(video=0):
            if packet.size and packet.is_keyframe:
                data, i, nals = bytes(packet), 0, []
                while i + 4 <= len(data) and len(nals) < 6:  # length-prefixed NAL units
                    n = int.from_bytes(data[i:i + 4], "big")
                    if n <= 0:
                        break
                    nals.append(data[i + 4] & 0x1f if h264 else (data[i + 4] >> 1) & 0x3f)
                    i += 4 + n
                keynals.append(nals)
    out[p] = {"why": why, "pts": index.pts.tolist(), "keys": index.keyframes.tolist(), "hashes": hashes,
              "keynals": keynals}
Path(sys.argv[2]).write_text(json.dumps(out))
'''


def plane_hashes(frames) -> list:
    from extractor.decode.nvdec import nv12_batch

    out = []
    for surface in nv12_batch(frames).cpu().numpy():
        y, uv = surface[:HEIGHT, :WIDTH], surface[HEIGHT:HEIGHT + HEIGHT // 2, :WIDTH]
        out.append([hashlib.md5(np.ascontiguousarray(a).tobytes()).hexdigest() for a in (y, uv[:, 0::2], uv[:, 1::2])])
    return out


def run_nvdec_frames(work: Path, source: Path, say=print) -> dict:
    import PyNvVideoCodec as nvc

    from segments import ENCODINGS, WRITE

    from extractor.decode.nvdec import segment_batches

    data = work / "nvdec_frames"
    encodings = {name: ENCODINGS[name] for name in NAMES}
    res = subprocess.run([sys.executable, "-c", WRITE, str(data), str(source), str(FRAMES), json.dumps(encodings)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": res.stderr[-3000:]}
    videos = [str(data / name) for name in NAMES]
    res = subprocess.run([sys.executable, "-c", REFERENCE, str(BENCH.parent), str(data / "ref.json"), *videos],
                         capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": res.stderr[-3000:]}
    ref, out = json.loads((data / "ref.json").read_text()), {}
    for path in videos:
        d = ref[path]
        pts = np.array(d["pts"])
        keys = np.searchsorted(pts, d["keys"])
        decoder = nvc.SimpleDecoder(path, gpu_id=0, use_device_memory=True, output_color_type=nvc.OutputColorType.NATIVE)
        got, shift = [], None
        while len(got) < FRAMES:
            frames = decoder.get_batch_frames(min(32, FRAMES - len(got)))
            if not frames:
                break
            if shift is None:
                shift = int(frames[0].getPTS()) - int(pts[0])
            got += plane_hashes(frames)
        whole = [i for i, h in enumerate(got) if h != d["hashes"][i]]
        r = out[Path(path).name] = {"keyframes": keys.tolist(), "keyframe_nal_types": d["keynals"],
                                    "timestamp_shift": shift, "whole_frames": len(got), "whole_differing": whole,
                                    "segments": {}}
        say(f"  {Path(path).name}: keyframes {keys.tolist()}, their NAL unit types {d['keynals']}; NVDEC's timestamps "
            f"minus the container's: {shift}")
        say(f"    from the start: {len(got)} frames, {len(whole)} differ: {whole[:40]}")
        for k in keys[1:]:
            first = int(k) + 3
            if first + 40 > FRAMES:
                continue
            ids_all, bad, error = [], [], ""
            try:
                for ids, frames in segment_batches(decoder, first, int(k), pts[first:first + 40], 16, shift):
                    bad += [int(i) for i, h in zip(ids, plane_hashes(frames)) if h != d["hashes"][i]]
                    ids_all += ids.tolist()
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
            r["segments"][int(k)] = {"frames": ids_all, "differing": bad, "error": error}
            span = f"frames {ids_all[0]}..{ids_all[-1]}" if ids_all else "no frames"
            say(f"    after a seek to keyframe {k}: {span}, {len(bad)} differ {bad[:20]} {error}")
    return out
