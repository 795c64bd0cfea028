"""The model on the worker's device: the backbone's weights loaded beside the worker's
start-up (WeightsLoader), its blocks compiled (compile_blocks), and batches of clips
submitted without waiting for their features (Engine)."""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

import torch

from .backbones import Backbone, open_backbone
from .config import DTYPES, RunConfig
from .video import RECOMPILE

Report = Callable[[dict], None]


def set_tf32(allow: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow


class WeightsLoader(threading.Thread):
    """Opens the checkpoint (unless `backbone` is open already) and puts its weights on the
    device (backbone.build) beside the worker's main thread, which meanwhile compiles the
    frame conversion: reading the checkpoint and copying it to the GPU release the GIL."""

    def __init__(self, cfg: RunConfig, backbone: Optional[Backbone], device: torch.device):
        super().__init__(daemon=True, name="weights")
        self.cfg, self.backbone, self.device = cfg, backbone, device
        self.clip_features, self.error = None, None
        self.start()

    def run(self):
        try:
            if self.backbone is None:
                self.backbone = open_backbone(self.cfg.model_type, self.cfg.ckpt_path, self.cfg.backbone_options())
            self.clip_features = self.backbone.build(self.device, DTYPES[self.cfg.dtype])
            if self.device.type == "cuda":  # (this thread's stream is not the main thread's)
                torch.cuda.current_stream(self.device).synchronize()
        except BaseException as e:  # handed to the main thread
            self.error = e

    def result(self) -> tuple[Backbone, object]:
        """(the backbone, its clip function on the device), once loaded."""
        self.join()
        if self.error is not None:
            raise self.error
        return self.backbone, self.clip_features


def find_blocks(module: torch.nn.Module) -> list:
    """The blocks of the model's stacks of identical blocks: each nn.ModuleList of two or more
    modules of one class whose elements hold parameters (LLaVA-ViT's blocks; Hugging Face's
    encoder.layer (DINOv2, DINOv3, VideoMAE, V-JEPA 2) and encoder.layers (CLIP, SigLIP,
    AIMv2)). A stack inside a block already taken is not taken again."""
    blocks, taken = [], set()
    for name, stack in module.named_modules():
        if any(name.startswith(t + ".") for t in taken):
            continue
        if isinstance(stack, torch.nn.ModuleList) and len(stack) > 1 and len({type(b) for b in stack}) == 1 \
                and any(True for _ in stack[0].parameters()):
            blocks.extend(stack)
            taken.add(name)
    return blocks


def compile_blocks(module: torch.nn.Module, dynamic: bool = False) -> int:
    """Compiles each block of the model's stacks of identical blocks (an nn.ModuleList of
    modules of one class: a transformer's layers) in place, and returns how many. The
    blocks share one compiled graph (their parameters are its inputs), so that compiling
    costs one block's tracing, not the whole model's (issue 25's H200 run: LLaVA-ViT large
    compiled whole took 32.9 s cold and 5.3 s warm, by blocks 7.9 s and 2.1 s). What lies
    outside the blocks (patch embedding, head) runs eagerly. `dynamic`: one graph for any
    number of images (the engine's shared frames), not one per batch shape."""
    blocks = find_blocks(module)
    for block in blocks:
        block.compile(dynamic=dynamic)
    return len(blocks)


class Engine:
    """The model on one device. Batches are submitted without waiting: the features come
    back through pinned memory behind a CUDA event, so the CPU prepares the next batch
    while the GPU runs this one."""

    def __init__(self, cfg: RunConfig, device: torch.device, report: Report, backbone: Optional[Backbone] = None,
                 clip_features=None):
        """`clip_features`: what backbone.build gave already (else it is built here)."""
        self.cfg, self.device, self.report = cfg, device, report
        if backbone is None:  # a spawned worker opens the checkpoint itself
            backbone = open_backbone(cfg.model_type, cfg.ckpt_path, cfg.backbone_options())
        self.width, self.preprocessing, self.description = backbone.width, backbone.preprocessing, backbone.description
        self.dtype = DTYPES[cfg.dtype]
        self.cuda = device.type == "cuda"
        set_tf32(self.cuda and cfg.dtype == "tf32")
        if clip_features is None:
            clip_features = backbone.build(device, self.dtype)
        self.encode = clip_features
        # An image model on overlapping clips (stride < clip length) runs each frame once and
        # averages its features over the clips that hold it (a stride-4 batch of 64 clips from
        # one video: 268 frames, not 1,024); the number of frames varies, so its blocks compile
        # for any number.
        self.frames_once = backbone.frame_features if cfg.stride < cfg.clip_len else None
        if cfg.compile and not compile_blocks(backbone.module, dynamic=self.frames_once is not None):
            self.encode = torch.compile(clip_features)  # no stack of blocks: the whole function
            self.frames_once = None
        self.frame_buffer: Optional[torch.Tensor] = None
        self.frames_run = 0  # frames the image model ran (frames_once), for tests and the bench
        self.eager_batches, self.fallbacks = 0, ""  # batches run eagerly once compiling was over, and why
        self.clip_shape = (cfg.clip_len, 3, *self.preprocessing.size)  # (T, 3, H, W) per clip
        self.batch = cfg.batch_clips
        # A compiled model sees one input tensor, always the same shape and strides: clips
        # are stacked into this buffer and a last partial batch runs on stale rows.
        self.buffer: Optional[torch.Tensor] = None
        t0 = time.perf_counter()
        if cfg.compile:  # compile now, so that start-up is not counted as throughput
            self.result(self.submit(self.random_clips()))
        self.compile_s = time.perf_counter() - t0

    def random_clips(self) -> list:
        """A batch of random clips, overlapping as the run's clips do (views of one run of
        frames, `stride` apart) when the engine runs shared frames once."""
        if self.frames_once is None:
            return list(torch.rand(self.batch, *self.clip_shape, device=self.device).to(self.dtype))
        T, stride = self.cfg.clip_len, self.cfg.stride
        frames = torch.rand((self.batch - 1) * stride + T, *self.clip_shape[1:], device=self.device).to(self.dtype)
        return [frames[i * stride:i * stride + T] for i in range(self.batch)]

    def _shared_frames(self, clips: list) -> torch.Tensor:
        """Clip features from each distinct frame's features, averaged. Frames are told apart
        by address: the clips are views into their video's frame buffer (a padded clip repeats
        one frame through a stride of 0), and all of them are alive, so one address is one frame."""
        slots: dict = {}
        frames, index = [], []
        for clip in clips:
            base, step = clip.data_ptr(), clip.stride(0) * clip.element_size()
            row = []
            for t in range(clip.shape[0]):
                i = slots.setdefault(base + t * step, len(frames))
                if i == len(frames):
                    frames.append(clip[t])
                row.append(i)
            index.append(row)
        m = len(frames)
        rows = max(8, -(-m // 8) * 8)  # (no batch of 1, which a compiled graph would specialise on)
        if self.frame_buffer is None or self.frame_buffer.shape[0] < rows:
            self.frame_buffer = torch.zeros(max(rows, self.batch * self.cfg.clip_len), *self.clip_shape[1:],
                                            device=self.device, dtype=self.dtype)
        torch.stack(frames, out=self.frame_buffer[:m])
        features = self.frames_once(self.frame_buffer[:rows])
        where = torch.tensor(index)
        where = where.pin_memory().to(self.device, non_blocking=True) if self.cuda else where
        self.frames_run += m
        return features[where].mean(dim=1)

    def _forward(self, clips: list) -> torch.Tensor:
        if self.frames_once is not None:
            return self._eager_if_compiled_out(self._shared_frames, clips)
        n = len(clips)
        if self.cfg.compile:
            if self.buffer is None or self.buffer.shape[0] != self.batch:
                self.buffer = torch.zeros(self.batch, *self.clip_shape, device=self.device, dtype=self.dtype)
            torch.stack(clips, out=self.buffer[:n])
            x = self.buffer
        else:
            x = torch.stack(clips)
        return self._eager_if_compiled_out(lambda x: self.encode(x)[:n].float(), x)

    def _eager_if_compiled_out(self, run: Callable, x):
        try:
            return run(x)
        except RuntimeError as e:  # a graph missing once compiling is over: this batch runs eagerly
            if RECOMPILE not in str(e):
                raise
            self.eager_batches += 1
            self.fallbacks = " ".join(str(e).split())[:400]
            with torch.compiler.set_stance("force_eager"):
                return run(x)

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

    def measure_rate(self, batches: int = 3) -> float:
        """Clips per second of the device's time, from `batches` full batches of random clips
        (run before the worker takes frames, so that its first claims know how many frames
        keep the model busy)."""
        clips = self.random_clips()
        handles = [self.submit(clips) for _ in range(batches)]
        seconds = sum(self.result(h)[1] for h in handles)
        return batches * len(clips) / max(seconds, 1e-9)

    @staticmethod
    def finished(handles: list) -> bool:
        """Whether the device has finished the batches of `handles` (result will not wait)."""
        return all(done is None or done.query() for _, done, _, _ in handles)

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
        return (outs[0] if len(outs) == 1 else torch.cat(outs)), seconds
