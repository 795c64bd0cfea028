"""The original program's pipeline, for the side-by-side figures: decord get_batch per clip
(every overlapping frame decoded again), float/255 + resize on the CPU, fp32 batch 20; and
its plan (the same data path behind a prefetch thread, TF32 + fp16 autocast, batch 64)."""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from extractor.checkpoints import build_from_checkpoint, read_checkpoint  # noqa: E402
from extractor.clips import clip_starts  # noqa: E402


class Timer:
    """Device time of the forwards (CUDA events), for the GPU-busy fraction."""

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
    return {"clips": clips, "wall_s": round(wall, 2), "clips_per_s": round(clips / wall, 1),
            "gpu_busy": round(timer.total_device_s() / wall, 3)}
