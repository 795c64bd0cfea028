"""Fidelity of the fast paths against today's pixel-exact one. Run by bench/run.py, each
step in its own process (PyAV and PyNvVideoCodec bundle different FFmpeg libraries, so no
process loads both):

  pixels VIDEO... --save REF.npz   the CPU decoder's YUV planes made RGB on the device (eager
                                   and torch.compile'd) against FFmpeg's RGB (PyAV to_ndarray)
  nvdec VIDEO... --ref REF.npz     NVDEC's NV12 frames made RGB on the GPU against the same RGB
  reference OUT VIDEO... --ckpt C --stride S
                                   today's path in fp32: FFmpeg's RGB, preprocessed on the
                                   device, the model uncompiled; one .npy per video
and `compare(test, reference)`: per-clip cosine between two folders of feature files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def compare(test_dir: Path, ref_dir: Path) -> dict:
    """Per-clip cosine and relative error of every feature file of `ref_dir` against
    `test_dir`'s; files missing there, or of another shape, are listed (`missing`)."""
    cos, rel, missing, worst = [], [], [], {}
    for ref_file in sorted(ref_dir.glob("*.npy")):
        other = test_dir / ref_file.name
        a, b = (np.load(other) if other.exists() else None), np.load(ref_file)
        if a is None or a.shape != b.shape:
            missing.append(ref_file.name if a is None else f"{ref_file.name} (shape {a.shape}, not {b.shape})")
            continue
        cos.append(cosine_rows(a, b))
        rel.append(np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1))
        worst[ref_file.stem] = round(float(cos[-1].min()), 7)
    cos, rel = (np.concatenate(x) if x else np.full(1, np.nan) for x in (cos, rel))
    return {"files": len(worst), "clips": len(cos) if worst else 0, "cos_min": float(cos.min()),
            "cos_mean": float(cos.mean()), "rel_err_max": float(rel.max()), "rel_err_mean": float(rel.mean()),
            "missing": missing, "worst_files": dict(sorted(worst.items(), key=lambda kv: kv[1])[:3])}


def agreement(got: torch.Tensor, want: np.ndarray) -> dict:
    diff = (got.cpu().to(torch.int16) - torch.from_numpy(want).to(torch.int16)).abs()
    return {"max_abs_diff": int(diff.max()), "exact_share": float((diff == 0).float().mean())}


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pixels(videos: list[Path], frames: int, save: Path) -> dict:
    """FFmpeg's RGB against decode.yuv on the device, for the first `frames` frames."""
    import av

    from extractor.decode.color import gpu_conversion
    from extractor.decode.readers import plane_array
    from extractor.decode.yuv import yuv420_to_rgb

    dev, results, ref = device(), {}, {}
    compiled = torch.compile(yuv420_to_rgb, dynamic=True)
    for path in videos:
        with av.open(str(path)) as container:
            decoded = [f for _, f in zip(range(frames), container.decode(video=0))]
        colour = gpu_conversion(decoded[0])
        want = np.stack([f.to_ndarray(format="rgb24") for f in decoded])
        h, w = want.shape[1:3]
        planes = [np.stack([plane_array(f.planes[i], *((h, w) if i == 0 else ((h + 1) // 2, (w + 1) // 2)))
                            for f in decoded]) for i in range(3)]
        y, u, v = (torch.from_numpy(p).to(dev) for p in planes)
        results[path.name] = {"colour": str(colour), "eager": agreement(yuv420_to_rgb(y, u, v, colour), want),
                              "compiled": agreement(compiled(y, u, v, colour), want)}
        ref[path.name] = want
        ref[path.name + "/colour"] = np.array([colour.matrix, str(colour.full_range), str(colour.interlaced)])
    np.savez(save, **ref)
    return results


def nvdec(videos: list[Path], ref: Path) -> dict:
    """NVDEC's NV12 (PyNvVideoCodec, native output) made RGB on the GPU, against FFmpeg's RGB."""
    import PyNvVideoCodec as nvc

    from extractor.decode.color import YuvToRgb
    from extractor.decode.nvdec import current_context_handle, nv12_batch
    from extractor.decode.yuv import split_nv12, yuv420_to_rgb

    dev = torch.device("cuda", 0)
    stream = torch.cuda.Stream(dev)
    context = current_context_handle(dev)
    wanted, results, decoder = np.load(ref), {}, None
    for k, path in enumerate(videos):  # one decoder, reconfigured from file to file as the pipeline does
        want = wanted[path.name]
        matrix, full, interlaced = wanted[path.name + "/colour"]
        colour = YuvToRgb(str(matrix), full == "True", interlaced == "True")
        if decoder is None:
            decoder = nvc.SimpleDecoder(str(path), gpu_id=0, cuda_context=context, cuda_stream=stream.cuda_stream,
                                        use_device_memory=True, output_color_type=nvc.OutputColorType.NATIVE)
        else:
            decoder.reconfigure_decoder(str(path))
        decoded = decoder.get_batch_frames(len(want))
        with torch.cuda.stream(stream):
            batch = nv12_batch(decoded, stream.cuda_stream)  # the exchange the sessions make
            h, w = want.shape[1:3]
            yy, uu, vv = split_nv12(batch, batch.shape[1] * 2 // 3, batch.shape[2])
            rgb = yuv420_to_rgb(yy[:, :h, :w], uu[:, :(h + 1) // 2, :(w + 1) // 2], vv[:, :(h + 1) // 2, :(w + 1) // 2],
                                colour)
        stream.synchronize()
        first = torch.from_dlpack(decoded[0])
        results[f"{path.name}#{k}"] = {**agreement(rgb, want), "frames": len(decoded),
                                       "surface_shape": list(first.shape), "surface_strides": list(first.stride())}
    del decoder
    return results


def reference(out: Path, videos: list[Path], ckpt: Path, stride: int, clip_len: int = 16) -> dict:
    """Today's pixel-exact path in fp32: FFmpeg's RGB frames, preprocessed on the device,
    clips through the uncompiled fp32 model."""
    import av

    from extractor.backbones import BackboneOptions, open_backbone
    from extractor.clips import clip_frame_indices, clip_starts
    from extractor.video import preprocess

    dev = device()
    backbone = open_backbone("llavavit", ckpt, BackboneOptions(model_name="auto", clip_len=clip_len))
    encode = backbone.build(dev, torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    clips = 0
    for path in videos:
        with av.open(str(path)) as container:
            frames = torch.stack([preprocess(torch.from_numpy(f.to_ndarray(format="rgb24")).to(dev)[None],
                                             backbone.preprocessing, torch.float32)[0]
                                  for f in container.decode(video=0)])
        n = len(frames)
        starts = clip_starts(n, clip_len, stride)
        rows = []
        with torch.inference_mode():
            for a in range(0, len(starts), 32):
                idx = torch.tensor([clip_frame_indices(s, clip_len, n) for s in starts[a:a + 32]], device=dev)
                rows.append(encode(frames[idx]).float().cpu())
        np.save(out / f"{path.stem}.npy", torch.cat(rows).numpy())
        clips += len(starts)
    return {"videos": len(videos), "clips": clips}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["pixels", "nvdec", "reference"])
    ap.add_argument("paths", type=Path, nargs="+")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--save", type=Path)
    ap.add_argument("--ref", type=Path)
    ap.add_argument("--ckpt", type=Path)
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.step == "pixels":
        result = pixels(a.paths, a.frames, a.save)
    elif a.step == "nvdec":
        result = nvdec(a.paths, a.ref)
    else:
        result = reference(a.paths[0], a.paths[1:], a.ckpt, a.stride)
    text = json.dumps(result, indent=1)
    print(text)
    if a.json:
        a.json.write_text(text)
