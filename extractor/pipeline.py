"""One worker's engine: decoder threads feed a bounded queue, the main thread preprocesses
on the model's device, slides clips, runs full batches (which may span videos) and hands
finished videos to a saver thread."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .checkpoints import build_from_checkpoint, read_checkpoint
from .model import temporal_positions
from .outputs import output_name, save_features
from .video import ClipAssembler, DecodeError, VideoDecoder, clip_starts, needed_frames, preprocess

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class RunConfig:
    save_path: Path
    ckpt_path: Path
    model_name: Optional[str] = "llava_vit_base_ln"
    model_key: Optional[str] = None
    device: str = "cpu"
    clip_len: int = 16
    stride: int = 4
    batch_clips: int = 64
    dtype: str = "fp32"
    compile: bool = False
    num_threads: int = 4  # decoder threads per video
    prefetch: int = 8  # decoded chunks in flight per worker
    parallel_videos: int = 1  # videos decoded at once per worker
    chunk_frames: int = 32
    normalize: str = "none"
    temporal_positions: Optional[str] = None  # None: the checkpoint format's default
    image_size: int = 224
    prefix: str = ""
    suffix: str = ""
    ext: str = "npy"

    def output_path(self, video: Path) -> Path:
        return self.save_path / output_name(video.stem, self.prefix, self.suffix, self.ext)


Report = Callable[[dict], None]
Claim = Callable[[], Optional[Path]]


@dataclass
class VideoJob:
    path: Path
    num_frames: int = 0
    fps: float = 0.0
    starts: list = field(default_factory=list)
    assembler: Optional[ClipAssembler] = None
    features: Optional[np.ndarray] = None
    filled: int = 0
    decoded: bool = False
    failed: bool = False
    decode_s: float = 0.0
    model_s: float = 0.0
    t_claimed: float = field(default_factory=time.perf_counter)


class ClipPrefetcher:
    """Decoder threads. Each claims a video, decodes the frames its clips need once, in
    chunks, and puts them on one bounded queue; the bound keeps memory flat whatever the
    video's length. decord releases the GIL while it decodes, so threads run in parallel."""

    def __init__(self, cfg: RunConfig, claim: Claim, report: Report, pin: bool):
        self.cfg, self.claim, self.report, self.pin = cfg, claim, report, pin
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, cfg.prefetch))
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, daemon=True, name=f"decoder{i}")
                        for i in range(max(1, cfg.parallel_videos))]
        for t in self.threads:
            t.start()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _loop(self):
        try:
            while not self.stop.is_set():
                path = self.claim()
                if path is None:
                    break
                self._decode(VideoJob(path))
        finally:
            self._put(("exit", None))

    def _decode(self, job: VideoJob):
        cfg = self.cfg
        t0 = time.perf_counter()
        try:
            dec = VideoDecoder(job.path, cfg.num_threads)
            job.num_frames, job.fps = dec.info.num_frames, dec.info.fps
            job.starts = clip_starts(job.num_frames, cfg.clip_len, cfg.stride)
            if job.num_frames < cfg.clip_len:
                self.report({"type": "warning", "video": job.path.name,
                             "msg": f"{job.num_frames} frames, shorter than one clip of {cfg.clip_len}: "
                                    "one clip padded with its last frame"})
            job.decode_s += time.perf_counter() - t0
            if not self._put(("open", job)):
                return
            for idx, frames in self._timed(job, dec.chunks(needed_frames(job.starts, cfg.clip_len, job.num_frames),
                                                            cfg.chunk_frames)):
                tensor = torch.from_numpy(frames)
                if self.pin:
                    tensor = tensor.pin_memory()
                if not self._put(("frames", job, idx, tensor)):
                    return
            self._put(("decoded", job))
        except DecodeError as e:
            self._put(("fail", job, str(e)))
        except Exception as e:  # a decoder bug must not take the worker down
            self._put(("fail", job, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))

    @staticmethod
    def _timed(job: VideoJob, it):
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                job.decode_s += time.perf_counter() - t0
            yield item

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)


class Saver:
    """Writes finished videos' features on a background thread, in order of completion."""

    def __init__(self, cfg: RunConfig, report: Report):
        self.cfg, self.report = cfg, report
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="saver")
        self.thread.start()

    def put(self, job: VideoJob):
        self.queue.put(job)

    def _loop(self):
        while True:
            job = self.queue.get()
            if job is None:
                return
            t0 = time.perf_counter()
            try:
                save_features(self.cfg.output_path(job.path), job.features)
            except OSError as e:
                self.report({"type": "failed", "video": job.path.name, "reason": f"cannot write features: {e}"})
                continue
            self.report({
                "type": "done", "video": job.path.name, "clips": len(job.starts), "frames": job.num_frames,
                "fps": job.fps, "width": int(job.features.shape[1]), "decode_s": job.decode_s,
                "model_s": job.model_s, "save_s": time.perf_counter() - t0,
                "wall_s": time.perf_counter() - job.t_claimed,
            })

    def close(self):
        self.queue.put(None)
        self.thread.join()


class Engine:
    """The model on one device, fed full batches of clips."""

    def __init__(self, cfg: RunConfig, device: torch.device, report: Report):
        self.cfg, self.device, self.report = cfg, device, report
        ckpt = read_checkpoint(cfg.ckpt_path, cfg.model_name, cfg.model_key)
        self.width = ckpt.config.width
        self.rule = cfg.temporal_positions or ckpt.default_temporal_positions
        self.t_pos = temporal_positions(cfg.clip_len, self.rule, device)
        self.dtype = DTYPES[cfg.dtype]
        if device.type == "cuda":
            allow = cfg.dtype == "tf32"
            torch.backends.cuda.matmul.allow_tf32 = allow
            torch.backends.cudnn.allow_tf32 = allow
        model = build_from_checkpoint(ckpt).to(device=device, dtype=self.dtype)
        self.model = torch.compile(model) if cfg.compile else model
        self.batch = cfg.batch_clips
        # Compiled models and CUDA keep one input shape: the last partial batch is padded.
        self.pad_batches = cfg.compile

    @torch.inference_mode()
    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """clips (n, 3, T, S, S) -> features (n, C) float32 on the CPU; n <= batch size."""
        n = clips.shape[0]
        if self.pad_batches and n < self.batch:
            pad = clips[-1:].expand(self.batch - n, *clips.shape[1:])
            clips = torch.cat([clips, pad])
        out = self.model(clips.to(self.dtype), self.t_pos)["head_output"][:n]
        return out.float().cpu()

    def forward_all(self, clips: torch.Tensor) -> torch.Tensor:
        """Runs `clips` in batches of self.batch, halving the batch on CUDA out-of-memory."""
        outs, i = [], 0
        while i < clips.shape[0]:
            chunk = clips[i:i + self.batch]
            try:
                outs.append(self.forward(chunk))
                i += chunk.shape[0]
            except torch.OutOfMemoryError:
                if self.batch == 1:
                    raise
                self.batch = max(1, self.batch // 2)
                torch.cuda.empty_cache()
                self.report({"type": "warning", "video": None,
                             "msg": f"CUDA out of memory: batch halved to {self.batch} clips"})
        return torch.cat(outs)


def run_worker(cfg: RunConfig, device: torch.device, claim: Claim, report: Report) -> None:
    """Claims videos until none are left, writing one feature file per video."""
    engine = Engine(cfg, device, report)
    report({"type": "ready", "temporal_positions": engine.rule, "width": engine.width})
    saver = Saver(cfg, report)
    prefetcher = ClipPrefetcher(cfg, claim, report, pin=device.type == "cuda")
    pending: list[tuple[VideoJob, list[int], torch.Tensor]] = []
    pending_clips = 0
    live = max(1, cfg.parallel_videos)

    def finish_if_complete(job: VideoJob):
        if not job.failed and job.decoded and job.features is not None and job.filled == len(job.starts):
            saver.put(job)

    def run_pending(final: bool):
        nonlocal pending, pending_clips
        while pending_clips >= engine.batch or (final and pending_clips):
            take, taken, rest = [], 0, []
            for job, nums, clips in pending:
                room = engine.batch - taken
                if room <= 0:
                    rest.append((job, nums, clips))
                elif len(nums) <= room:
                    take.append((job, nums, clips))
                    taken += len(nums)
                else:
                    take.append((job, nums[:room], clips[:room]))
                    rest.append((job, nums[room:], clips[room:]))
                    taken += room
            pending, pending_clips = rest, pending_clips - taken
            take = [(j, n, c) for j, n, c in take if not j.failed]
            if not take:
                continue
            t0 = time.perf_counter()
            feats = engine.forward_all(torch.cat([c for _, _, c in take]))
            dt = time.perf_counter() - t0
            row = 0
            for job, nums, _ in take:
                job.features[nums] = feats[row:row + len(nums)].numpy()
                job.filled += len(nums)
                job.model_s += dt * len(nums) / feats.shape[0]
                row += len(nums)
            for job in {id(j): j for j, _, _ in take}.values():
                finish_if_complete(job)

    try:
        while live:
            event = prefetcher.queue.get()
            kind, job = event[0], event[1]
            if kind == "exit":
                live -= 1
            elif kind == "open":
                job.assembler = ClipAssembler(job.starts, cfg.clip_len, job.num_frames)
                job.features = np.empty((len(job.starts), engine.width), dtype=np.float32)
            elif kind == "frames":
                idx, frames = event[2], event[3]
                x = preprocess(frames.to(device, non_blocking=True), cfg.image_size, cfg.normalize, engine.dtype)
                nums, clips = job.assembler.push(idx, x)
                if nums:
                    pending.append((job, nums, clips))
                    pending_clips += len(nums)
                    run_pending(final=False)
            elif kind == "decoded":
                job.decoded = True
                if not job.assembler.done:
                    job.failed = True
                    report({"type": "failed", "video": job.path.name,
                            "reason": f"decoder returned too few frames ({job.assembler.next_clip} of "
                                      f"{len(job.starts)} clips)"})
                job.assembler = None
                finish_if_complete(job)
            elif kind == "fail":
                job.failed = True
                job.assembler = None
                report({"type": "failed", "video": job.path.name, "reason": event[2]})
        run_pending(final=True)
    finally:
        prefetcher.close()
        saver.close()
