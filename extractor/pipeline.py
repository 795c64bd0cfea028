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

from .backbones import Backbone, BackboneOptions, open_backbone
from .datasets import feature_relpath, video_name
from .outputs import save_features
from .video import (ClipAssembler, DecodeError, DecordDecoder, NvdecDecoder, VideoDecoder, clip_starts, needed_frames,
                    preprocess)

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class RunConfig:
    save_path: Path
    ckpt_path: Path
    model_type: str = "llavavit"
    model_name: Optional[str] = "llava_vit_base_ln"
    model_key: Optional[str] = None
    device: str = "cpu"
    clip_len: int = 16
    stride: int = 4
    batch_clips: int = 64
    dtype: str = "fp32"
    compile: bool = False
    decoder: str = "auto"  # "auto", "cpu" (FFmpeg via PyAV), "decord", or "nvdec" (the GPU's video decoder)
    # auto: decord (faster) for a video whose decoded frames fit in this many bytes, since
    # decord may read the whole video ahead; PyAV (flat memory) for longer ones.
    read_ahead_bytes: int = 1 << 30
    num_threads: int = 4  # decoder threads per video
    prefetch: int = 8  # decoded chunks in flight per worker
    parallel_videos: int = 1  # videos decoded at once per worker
    chunk_frames: int = 32  # frames per decoded chunk, at most
    chunk_bytes: int = 64 << 20  # ... and at most this many bytes of RGB per chunk (fewer frames at 1080p+)
    normalize: Optional[str] = None  # None: the backbone's default
    temporal_positions: Optional[str] = None  # None: the checkpoint format's default
    prefix: str = ""
    suffix: str = ""
    ext: str = "npy"
    lost_after_s: float = 120.0  # several processes: a process silent this long is lost
    decode_timeout_s: float = 600.0  # a video whose decoding makes no progress this long is hung
    data_path: Optional[Path] = None  # the videos' names are relative to it (extractor/datasets.py)

    def backbone_options(self) -> BackboneOptions:
        return BackboneOptions(self.model_name, self.model_key, self.temporal_positions, self.normalize, self.clip_len)

    def video_name(self, video: Path) -> str:
        """The name a video goes by in events and records (not its file name: videos in
        different folders may share one)."""
        return video_name(video, self.data_path)

    def output_path(self, video: Path) -> Path:
        return self.save_path / feature_relpath(self.video_name(video), self.prefix, self.suffix, self.ext)


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
    frames_decoded: int = 0  # for progress events: frames read so far, in video order
    failed: bool = False
    decoder: str = ""  # which decoder read it
    rotation: int = 0  # display rotation applied to its frames
    decode_s: float = 0.0
    model_s: float = 0.0
    t_claimed: float = field(default_factory=time.perf_counter)


class ClipPrefetcher:
    """Decoder threads. Each claims a video, decodes the frames its clips need once, in
    chunks, and puts them on one bounded queue; the bound keeps memory flat whatever the
    video's length. FFmpeg decodes outside the GIL, so threads decode in parallel; PyAV's
    per-frame Python work still shares the GIL (measured: 1,111 frames/s in threads against
    1,566 in processes, 640x480, OPTIMIZATION_SUMMARY.md)."""

    def __init__(self, cfg: RunConfig, claim: Claim, report: Report, device: torch.device):
        self.cfg, self.claim, self.report, self.device = cfg, claim, report, device
        self.pin = device.type == "cuda" and cfg.decoder != "nvdec"
        if cfg.decoder == "nvdec":
            import PyNvVideoCodec  # noqa: F401  (imported once here, not by several threads at once)
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, cfg.prefetch))
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, daemon=True, name=f"decoder{i}")
                        for i in range(max(1, cfg.parallel_videos))]
        for t in self.threads:
            t.start()

    def _put(self, item, job: Optional[VideoJob] = None, last_progress: Optional[list] = None) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                if job is not None:  # waiting for the model is not a hung decoder
                    self._progress(job, last_progress)
        return False

    def _loop(self):
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # the current device is per thread
        try:
            while not self.stop.is_set():
                path = self.claim()
                if path is None:
                    break
                self._decode(VideoJob(path))
        finally:
            self._put(("exit", None))

    def _progress(self, job: VideoJob, last: list):
        """Tells the supervisor, every few seconds, that this video's decoding moves (its
        watchdog restarts a worker whose decoder hangs)."""
        now = time.monotonic()
        if now - last[0] > 2.0:
            last[0] = now
            self.report({"type": "progress", "video": self.cfg.video_name(job.path), "frames": job.frames_decoded,
                         "total": job.num_frames})

    def _decode(self, job: VideoJob):
        cfg = self.cfg
        t0 = time.perf_counter()
        last_progress = [time.monotonic()]
        dec = None
        try:
            dec = self._open(job.path)
            job.decoder = dec.name
            job.num_frames, job.fps, job.rotation = dec.info.num_frames, dec.info.fps, dec.info.rotation
            job.starts = clip_starts(job.num_frames, cfg.clip_len, cfg.stride)
            if job.num_frames < cfg.clip_len:
                self.report({"type": "warning", "video": self.cfg.video_name(job.path),
                             "msg": f"{job.num_frames} frames, shorter than one clip of {cfg.clip_len}: "
                                    "one clip padded with its last frame"})
            job.decode_s += time.perf_counter() - t0
            if not self._put(("open", job), job, last_progress):
                return
            frame_bytes = max(1, dec.info.height * dec.info.width * 3)
            chunk = max(1, min(cfg.chunk_frames, cfg.chunk_bytes // frame_bytes))
            for idx, frames in self._timed(job, dec.chunks(needed_frames(job.starts, cfg.clip_len, job.num_frames),
                                                            chunk)):
                job.frames_decoded = int(idx[-1]) + 1
                self._progress(job, last_progress)
                tensor = torch.from_numpy(frames) if isinstance(frames, np.ndarray) else frames
                if self.pin:
                    tensor = tensor.pin_memory()
                if not self._put(("frames", job, idx, tensor), job, last_progress):
                    return
            self.report({"type": "decoded", "video": self.cfg.video_name(job.path)})
            self._put(("decoded", job))
        except DecodeError as e:
            self._put(("fail", job, str(e)))
        except Exception as e:  # a decoder bug must not take the worker down
            self._put(("fail", job, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
        finally:
            if dec is not None:
                dec.close()

    def _open(self, path: Path):
        cfg = self.cfg
        if cfg.decoder == "nvdec":
            return NvdecDecoder(path, self.device.index or 0)
        if cfg.decoder == "decord":
            return DecordDecoder(path, cfg.num_threads)
        dec = VideoDecoder(path, cfg.num_threads)
        if cfg.decoder == "auto":
            info = dec.info
            if info.rotation == 0 and info.num_frames * info.height * info.width * 3 <= cfg.read_ahead_bytes:
                dec.close()
                return DecordDecoder(path, cfg.num_threads)
        return dec

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
                self.report({"type": "failed", "video": self.cfg.video_name(job.path),
                             "reason": f"cannot write features: {e}"})
                continue
            self.report({
                "type": "done", "video": self.cfg.video_name(job.path), "path": str(job.path.resolve()),
                "feature_file": self.cfg.output_path(job.path).name, "clips": len(job.starts), "frames": job.num_frames,
                "fps": job.fps, "width": int(job.features.shape[1]), "decoder": job.decoder, "rotation": job.rotation,
                "decode_s": job.decode_s,
                "model_s": job.model_s, "save_s": time.perf_counter() - t0,
                "wall_s": time.perf_counter() - job.t_claimed,
            })

    def close(self):
        self.queue.put(None)
        self.thread.join()


class Engine:
    """The model on one device. Batches are submitted without waiting: the features come
    back through pinned memory behind a CUDA event, so the CPU prepares the next batch
    while the GPU runs this one."""

    def __init__(self, cfg: RunConfig, device: torch.device, report: Report, backbone: Optional[Backbone] = None):
        self.cfg, self.device, self.report = cfg, device, report
        if backbone is None:  # a spawned worker opens the checkpoint itself
            backbone = open_backbone(cfg.model_type, cfg.ckpt_path, cfg.backbone_options())
        self.width, self.preprocessing, self.description = backbone.width, backbone.preprocessing, backbone.description
        self.dtype = DTYPES[cfg.dtype]
        self.cuda = device.type == "cuda"
        if self.cuda:
            allow = cfg.dtype == "tf32"
            torch.backends.cuda.matmul.allow_tf32 = allow
            torch.backends.cudnn.allow_tf32 = allow
        clip_features = backbone.build(device, self.dtype)
        self.encode = torch.compile(clip_features) if cfg.compile else clip_features
        self.clip_shape = (cfg.clip_len, 3, *self.preprocessing.size)  # (T, 3, H, W) per clip
        self.batch = cfg.batch_clips
        # A compiled model sees one input tensor, always the same shape and strides: clips
        # are stacked into this buffer and a last partial batch runs on stale rows.
        self.buffer: Optional[torch.Tensor] = None
        if cfg.compile:  # compile now, so that start-up is not counted as throughput
            warm = torch.rand(self.batch, *self.clip_shape, device=device).to(self.dtype)
            self.result(self.submit(list(warm)))

    def _forward(self, clips: list) -> torch.Tensor:
        n = len(clips)
        if self.cfg.compile:
            if self.buffer is None or self.buffer.shape[0] != self.batch:
                self.buffer = torch.zeros(self.batch, *self.clip_shape, device=self.device, dtype=self.dtype)
            torch.stack(clips, out=self.buffer[:n])
            x = self.buffer
        else:
            x = torch.stack(clips)
        return self.encode(x)[:n].float()

    @torch.inference_mode()
    def submit(self, clips: list) -> list:
        """Launches clips (each (T, 3, S, S) in the model dtype) in batches of self.batch,
        halving the batch on CUDA out-of-memory. Returns handles for `result`."""
        handles, i = [], 0
        while i < len(clips):
            part = clips[i:i + self.batch]
            try:
                if self.cuda:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    out = self._forward(part)
                    end.record()
                    host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
                    host.copy_(out, non_blocking=True)
                    done = torch.cuda.Event()
                    done.record()
                    handles.append((host, done, start, end))
                else:
                    t0 = time.perf_counter()
                    handles.append((self._forward(part), None, t0, time.perf_counter()))
                i += len(part)
            except torch.OutOfMemoryError:
                if self.batch == 1:
                    raise
                self.batch, self.buffer = max(1, self.batch // 2), None
                torch.cuda.empty_cache()
                self.report({"type": "warning", "video": None,
                             "msg": f"CUDA out of memory: batch halved to {self.batch} clips"})
        return handles

    @staticmethod
    def result(handles: list) -> tuple[torch.Tensor, float]:
        """(features (n, C) float32 on the CPU, seconds the device spent on them)."""
        outs, seconds = [], 0.0
        for out, done, start, end in handles:
            if done is not None:
                done.synchronize()
                seconds += start.elapsed_time(end) / 1e3
            else:
                seconds += end - start
            outs.append(out)
        return torch.cat(outs), seconds


def run_worker(cfg: RunConfig, device: torch.device, claim: Claim, report: Report,
               backbone: Optional[Backbone] = None) -> None:
    """Claims videos until none are left, writing one feature file per video. `backbone`:
    one already opened (else the worker opens cfg.ckpt_path)."""
    engine = Engine(cfg, device, report, backbone)
    report({"type": "ready", "backbone": engine.description, "width": engine.width})
    saver = Saver(cfg, report)
    prefetcher = ClipPrefetcher(cfg, claim, report, device)
    copy_stream = torch.cuda.Stream(device) if engine.cuda else None
    pending: list[tuple[VideoJob, int, torch.Tensor]] = []  # clips waiting for a batch
    in_flight: list = []  # submitted batches whose features are not back yet
    live = max(1, cfg.parallel_videos)

    def finish_if_complete(job: VideoJob):
        if not job.failed and job.decoded and job.features is not None and job.filled == len(job.starts):
            saver.put(job)

    def collect(batch):
        owners, handles = batch
        feats, seconds = engine.result(handles)
        for row, (job, num) in enumerate(owners):
            if not job.failed:
                job.features[num] = feats[row].numpy()
                job.filled += 1
                job.model_s += seconds / len(owners)
        for job in {id(j): j for j, _ in owners}.values():
            finish_if_complete(job)

    def launch(final: bool):
        nonlocal pending
        while len(pending) >= engine.batch or (final and pending):
            take, pending = pending[:engine.batch], pending[engine.batch:]
            take = [(job, num, clip) for job, num, clip in take if not job.failed]
            if not take:
                continue
            in_flight.append(([(job, num) for job, num, _ in take], engine.submit([clip for _, _, clip in take])))
            while len(in_flight) > 1:  # keep one batch queued on the device, collect the one before
                collect(in_flight.pop(0))

    def to_device(frames: torch.Tensor) -> torch.Tensor:
        if copy_stream is None or frames.is_cuda:
            return frames
        with torch.cuda.stream(copy_stream):  # uint8 upload on its own stream, beside compute
            gpu = frames.to(device, non_blocking=True)
        torch.cuda.current_stream(device).wait_stream(copy_stream)
        gpu.record_stream(torch.cuda.current_stream(device))
        return gpu

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
                x = preprocess(to_device(event[3]), engine.preprocessing, engine.dtype)
                nums, clips = job.assembler.push(event[2], x)
                pending.extend((job, num, clip) for num, clip in zip(nums, clips))
                launch(final=False)
            elif kind == "decoded":
                job.decoded = True
                if not job.assembler.done:
                    job.failed = True
                    report({"type": "failed", "video": cfg.video_name(job.path),
                            "reason": f"decoder returned too few frames ({job.assembler.next_clip} of "
                                      f"{len(job.starts)} clips)"})
                job.assembler = None
                finish_if_complete(job)
            elif kind == "fail":
                job.failed = True
                job.assembler = None
                report({"type": "failed", "video": cfg.video_name(job.path), "reason": event[2]})
        launch(final=True)
        while in_flight:
            collect(in_flight.pop(0))
    finally:
        prefetcher.close()
        saver.close()
    report({"type": "peak", "rss_gib": peak_rss_gib(),
            "gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30 if engine.cuda else 0.0})


def peak_rss_gib() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
