"""Side-by-side benchmark: the original pipeline against ours, on a corpus it makes itself.

  python bench/run.py                  # on a GPU: charades-like and hacs-like corpora
  python bench/run.py --quick          # tiny corpus and model on the CPU (a smoke test)

For each corpus it measures, in one process:
  original_fp32_b20   the original script: decord get_batch per clip (every overlapping
                      frame decoded again), float/255 + resize on the CPU, fp32, batch 20
  original_planned    the original's plan: the same data path behind a prefetch thread,
                      TF32 + fp16 autocast, batch 64
  ours_model_only     our engine on random clips already on the device (the ceiling)
  ours_end_to_end     feat_extraction's pipeline, files written
and prints clips/s, video-seconds per wall-second, GPU busy fraction, peak GPU memory and
the ratios to the original and to our model-only figure."""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from checkpoints import random_backbone  # noqa: E402
from corpus import make_corpus  # noqa: E402
from extractor.checkpoints import build_from_checkpoint, read_checkpoint  # noqa: E402
from extractor.demo import random_checkpoint  # noqa: E402
from extractor.launch import RunSummary, launch  # noqa: E402
from extractor.model import ViTConfig  # noqa: E402
from extractor.pipeline import Engine, RunConfig  # noqa: E402
from extractor.video import clip_starts  # noqa: E402

QUICK_MODEL = ViTConfig(patch_size=16, width=64, layers=1, head_dim=64, mlp_width=128)


class Timer:
    """Wall time, and device time of the forwards (CUDA events) for the busy fraction."""

    def __init__(self, cuda: bool):
        self.cuda, self.device_s, self.events = cuda, 0.0, []

    @contextlib.contextmanager
    def forward(self):
        if not self.cuda:
            t0 = time.perf_counter()
            yield
            self.device_s += time.perf_counter() - t0
            return
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        yield
        b.record()
        self.events.append((a, b))

    def total_device_s(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            self.device_s += sum(a.elapsed_time(b) / 1e3 for a, b in self.events)
            self.events = []
        return self.device_s


def original_clips(video: Path, clip_len: int, stride: int, threads: int):
    """The original data path: one get_batch per clip, CPU float + resize per clip."""
    import decord

    vr = decord.VideoReader(str(video), ctx=decord.cpu(0), num_threads=threads)
    n = len(vr)
    for s in clip_starts(n, clip_len, stride):
        idx = [min(s + k, n - 1) for k in range(clip_len)]
        frames = torch.from_numpy(vr.get_batch(idx).asnumpy()).permute(0, 3, 1, 2).float() / 255.0
        yield F.interpolate(frames, size=(224, 224), mode="bilinear", align_corners=False).permute(1, 0, 2, 3)


def run_original(videos, ckpt_path, device, clip_len, stride, planned: bool, threads: int) -> dict:
    model = build_from_checkpoint(read_checkpoint(ckpt_path, "auto")).to(device)
    cuda = device.type == "cuda"
    batch = 64 if planned else 20
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = planned
        torch.backends.cudnn.allow_tf32 = planned
        torch.cuda.reset_peak_memory_stats()
    amp = torch.autocast("cuda", dtype=torch.float16) if (planned and cuda) else contextlib.nullcontext()
    timer, clips, t0 = Timer(cuda), 0, time.perf_counter()

    def forward(items):
        nonlocal clips
        x = torch.stack(items).to(device, non_blocking=planned)
        with torch.inference_mode(), amp, timer.forward():
            model(x)["head_output"].float().cpu()
        clips += len(items)

    for video in videos:
        source = original_clips(video, clip_len, stride, threads)
        if planned:  # the original's ClipPrefetcher: a thread and a queue of 8 clips
            q: queue.Queue = queue.Queue(maxsize=8)
            threading.Thread(target=lambda: ([q.put(c) for c in source], q.put(None)), daemon=True).start()
            source = iter(q.get, None)
        items = []
        for clip in source:
            items.append(clip)
            if len(items) == batch:
                forward(items)
                items = []
        if items:
            forward(items)
    wall = time.perf_counter() - t0
    return {"clips": clips, "wall_s": wall, "device_s": timer.total_device_s(),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0}


def run_model_only(cfg: RunConfig, device, clips: int) -> dict:
    engine = Engine(cfg, device, lambda ev: None)
    batch = [torch.rand(*engine.clip_shape, device=device).to(engine.dtype) for _ in range(engine.batch)]
    engine.result(engine.submit(batch))  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0, device_s, done, in_flight = time.perf_counter(), 0.0, 0, []
    while done < clips:
        in_flight.append(engine.submit(batch))
        done += len(batch)
        if len(in_flight) > 1:
            device_s += engine.result(in_flight.pop(0))[1]
    for handles in in_flight:
        device_s += engine.result(handles)[1]
    wall = time.perf_counter() - t0
    return {"clips": done, "wall_s": wall, "device_s": device_s,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0}


def run_ours(cfg: RunConfig, videos, device) -> dict:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    summary = launch(cfg, videos, 1, RunSummary())
    assert not summary.failed, summary.failed
    wall = summary.wall_s - summary.startup_s
    return {"clips": summary.clips, "wall_s": wall, "device_s": summary.model_s, "startup_s": summary.startup_s,
            "video_s": summary.video_s,
            "decode_s": summary.decode_s,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny corpus and model on the CPU")
    ap.add_argument("--corpora", default="charades,hacs")
    ap.add_argument("--videos", type=int, default=6, help="videos per corpus")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--work", type=Path, default=None, help="folder for the corpus and outputs (default: temp)")
    ap.add_argument("--skip", default="", help="comma-separated runs to leave out, e.g. original_fp32_b20")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--parallel_videos", type=int, default=None)
    ap.add_argument("--num_threads", type=int, default=4)
    ap.add_argument("--batch_clips", type=int, default=64)
    ap.add_argument("--decoder", choices=["auto", "cpu", "decord", "nvdec"], default="auto",
                    help="our pipeline's decoder")
    a = ap.parse_args()

    device = torch.device("cpu" if a.quick or not torch.cuda.is_available() else "cuda")
    work = a.work or Path(tempfile.mkdtemp(prefix="featbench_"))
    ckpt = work / "model.pt"
    if not ckpt.exists():
        random_checkpoint(ckpt, QUICK_MODEL) if a.quick else random_backbone(ckpt, "llava_vit_base_ln")
    n_videos, seconds = (2, 1.0) if a.quick else (a.videos, a.seconds)
    skip = set(filter(None, a.skip.split(",")))
    results = {}
    print(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'} | torch {torch.__version__}"
          f" | {'quick: tiny random model' if a.quick else 'llava_vit_base_ln, random weights'}", flush=True)
    for corpus in a.corpora.split(","):
        preset_stride = {"charades": 4, "hacs": 16}[corpus]
        videos = make_corpus(work / corpus, corpus, n_videos, seconds)
        # decord and PyNvVideoCodec bundle different FFmpeg libraries: with --decoder nvdec this
        # process must not load decord, so the original runs (which use it) come last.
        cfg = RunConfig(save_path=work / f"out_{corpus}", ckpt_path=ckpt, model_name="auto", device=device.type,
                        stride=preset_stride, batch_clips=a.batch_clips,
                        dtype="bf16" if device.type == "cuda" else "fp32", compile=device.type == "cuda",
                        num_threads=a.num_threads, decoder=a.decoder,
                        parallel_videos=a.parallel_videos or (3 if device.type == "cuda" else 1), prefetch=16)
        cfg.save_path.mkdir(parents=True, exist_ok=True)
        runs = {
            "original_fp32_b20": lambda: run_original(videos, ckpt, device, 16, preset_stride, False, 8),
            "original_planned": lambda: run_original(videos, ckpt, device, 16, preset_stride, True, 16),
            "ours_model_only": lambda: run_model_only(cfg, device, 640 if device.type == "cuda" else 8),
            "ours_end_to_end": lambda: run_ours(cfg, videos, device),
        }
        order = ["ours_model_only", "ours_end_to_end", "original_fp32_b20", "original_planned"]
        for name in order:
            if name in skip:
                continue
            r = runs[name]()
            r["clips_per_s"] = r["clips"] / r["wall_s"]
            if name.startswith("original"):
                r["video_s"] = sum(_duration(v) for v in videos)
            r["video_s_per_s"] = r["video_s"] / r["wall_s"] if "video_s" in r else float("nan")
            r["busy"] = r["device_s"] / r["wall_s"]
            results[f"{corpus}/{name}"] = r
            print(f"  {corpus}/{name}: {r['clips_per_s']:.1f} clips/s", flush=True)
    _table(results)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


def _duration(video: Path) -> float:
    import decord

    vr = decord.VideoReader(str(video))
    return len(vr) / vr.get_avg_fps()


def _table(results: dict):
    shown = ["original_fp32_b20", "original_planned", "ours_model_only", "ours_end_to_end"]
    results = dict(sorted(results.items(), key=lambda kv: (kv[0].split("/")[0], shown.index(kv[0].split("/")[1]))))
    print(f"\n{'run':36s} {'clips/s':>8s} {'video s/s':>9s} {'GPU busy':>8s} {'peak GiB':>8s} "
          f"{'x original':>10s} {'/ model-only':>12s}")
    for key, r in results.items():
        corpus = key.split("/")[0]
        base = results.get(f"{corpus}/original_fp32_b20", {}).get("clips_per_s")
        top = results.get(f"{corpus}/ours_model_only", {}).get("clips_per_s")
        print(f"{key:36s} {r['clips_per_s']:8.1f} {r['video_s_per_s']:9.1f} {r['busy']:8.0%} {r['peak_gib']:8.2f} "
              f"{(r['clips_per_s'] / base) if base else float('nan'):10.2f} "
              f"{(r['clips_per_s'] / top) if top else float('nan'):12.0%}")


if __name__ == "__main__":
    main()
