"""Finding videos, turning decoded frames into model input, and sliding clips over frames."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import threading

import numpy as np
import torch
import torch.nn.functional as F

from .clips import clip_frame_indices
from .decode.yuv import split_nv12, yuv420_to_rgb
from .decode.common import VideoInfo, packed_frame_bytes

if TYPE_CHECKING:
    from .backbones import Preprocessing

VIDEO_EXTENSIONS = {
    ".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts", ".mts",
}


def list_videos(data_path: Path) -> list[Path]:
    """Files under data_path (not recursive) whose extension is a video extension, sorted."""
    return sorted(p for p in data_path.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)


def preprocess(frames: torch.Tensor, prep: "Preprocessing", out_dtype: torch.dtype) -> torch.Tensor:
    """uint8 (n, H, W, 3) -> (n, 3, h, w): RGB/255, bilinear resize (align_corners=False;
    antialiased only if the backbone asks) in float32, optional mean/std; out_dtype last.

    For LLaVA-ViT this is the original script's preprocessing, frame by frame; it runs
    wherever `frames` lives (on the GPU in a CUDA run)."""
    x = frames.permute(0, 3, 1, 2).float().div_(255.0)
    if tuple(x.shape[-2:]) != tuple(prep.size):
        x = F.interpolate(x, size=prep.size, mode="bilinear", align_corners=False, antialias=prep.antialias)
    x = x.contiguous()  # interpolate keeps the decoder's channels-last strides; the model wants NCHW
    if prep.mean is not None:
        mean = torch.tensor(prep.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(prep.std, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x.to(out_dtype)


# torch.compile'd functions are called from one thread at a time: while one thread compiles
# (FX tracing, a process-wide state), a compiled call in another raises.
COMPILED_CALLS = threading.RLock()


def rgb_to_input(rgb: torch.Tensor, turns: int, prep: "Preprocessing", out_dtype: torch.dtype) -> torch.Tensor:
    """uint8 RGB (n, H, W, 3) as decoded -> model input: turned upright, then `preprocess`."""
    if turns:
        rgb = torch.rot90(rgb, turns, dims=(1, 2))
    return preprocess(rgb, prep, out_dtype)


def yuv_to_input(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor, colour, turns: int, prep: "Preprocessing",
                 out_dtype: torch.dtype) -> torch.Tensor:
    """YUV 4:2:0 planes -> FFmpeg's RGB (decode.color) -> `rgb_to_input`. Compiled on the
    GPU, the conversion is fused into the resize: only the pixels it samples are converted."""
    return rgb_to_input(yuv420_to_rgb(y, u, v, colour), turns, prep, out_dtype)


class InputMaker:
    """Turns decoded frames, wherever they were decoded, into model input (n, 3, S, S) in
    the model's dtype on the model's device: a decoder process's packed frames (copied to
    the GPU from its pinned buffer on a side stream) or NVDEC's NV12 surfaces. With
    `compile`, each conversion is one torch.compile'd function over dynamic shapes, so
    that new resolutions do not recompile."""

    def __init__(self, device: torch.device, prep: "Preprocessing", dtype: torch.dtype, compile: bool):
        self.device, self.prep, self.dtype = device, prep, dtype
        self.cuda = device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        self.yuv, self.rgb = yuv_to_input, rgb_to_input
        if compile:
            # one compiled variant per colour conversion, rotation and input layout
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            self.yuv = torch.compile(yuv_to_input, dynamic=True)
            self.rgb = torch.compile(rgb_to_input, dynamic=True)

    def from_host(self, host: torch.Tensor, count: int, info: VideoInfo, colour) -> tuple[torch.Tensor, object]:
        """`count` packed frames in host memory (YUV converted with `colour`, or RGB when
        colour is None) -> (model input, the CUDA event after which the host memory may be
        reused; None when it may be reused at once)."""
        copied = None
        if self.cuda:
            with torch.cuda.stream(self.copy_stream):
                frames = torch.empty(host.numel(), dtype=torch.uint8, device=self.device)
                frames.copy_(host, non_blocking=True)
                copied = torch.cuda.Event()
                copied.record(self.copy_stream)
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(self.copy_stream)
            frames.record_stream(compute)
        else:
            frames = host
        return self.from_frames(frames.view(count, -1), info, colour), copied

    def from_frames(self, frames: torch.Tensor, info: VideoInfo, colour) -> torch.Tensor:
        """(n, frame bytes) uint8, each row one packed frame (Y, U, V planes, or RGB)."""
        h, w = info.coded_size
        n = frames.shape[0]
        if colour is None:
            with COMPILED_CALLS:
                return self.rgb(frames.view(n, h, w, 3), info.turns, self.prep, self.dtype)
        ch, cw = (h + 1) // 2, (w + 1) // 2
        y = frames[:, :h * w].view(n, h, w)
        u = frames[:, h * w:h * w + ch * cw].view(n, ch, cw)
        v = frames[:, h * w + ch * cw:].view(n, ch, cw)
        with COMPILED_CALLS:
            return self.yuv(y, u, v, colour, info.turns, self.prep, self.dtype)

    def from_nv12(self, batch: torch.Tensor, info: VideoInfo) -> torch.Tensor:
        """NVDEC's NV12 frames (n, rows, pitch): the luma plane (surface height rows, then
        the interleaved chroma plane) may be taller and wider than the picture."""
        h, w = info.coded_size
        ch, cw = (h + 1) // 2, (w + 1) // 2
        y, u, v = split_nv12(batch, batch.shape[1] * 2 // 3, batch.shape[2])
        with COMPILED_CALLS:
            return self.yuv(y[:, :h, :w], u[:, :ch, :cw], v[:, :ch, :cw], info.colour, info.turns, self.prep,
                            self.dtype)

    @torch.inference_mode()
    def warm_up(self, colours):
        """Compiles now (start-up) rather than on the first video: the RGB path, and the YUV
        path for each colour conversion given, from packed planes and (on a GPU) from NV12
        surfaces; small frames, since shapes are dynamic."""
        info = VideoInfo(4, 30.0, 48, 64)
        for colour in (*colours, None):
            size = packed_frame_bytes(48, 64, colour)
            self.from_frames(torch.zeros(3, size, dtype=torch.uint8, device=self.device), info, colour)
            if self.cuda and colour is not None:
                self.from_nv12(torch.zeros(3, 72, 64, dtype=torch.uint8, device=self.device),
                               VideoInfo(4, 30.0, 48, 64, colour=colour))


class ClipAssembler:
    """Slides clip windows over a stream of preprocessed frames of one video.

    Frames (n, 3, S, S) arrive in increasing index order; `push` returns the clips they
    complete, as (clip numbers, list of (T, 3, S, S) tensors: views into the frame buffer
    where the clip's frames are consecutive), and drops frames no later clip needs, so
    memory holds at most one clip span plus one chunk. No index tensor is sent to the
    device: building clips never waits for the GPU."""

    def __init__(self, starts: list[int], clip_len: int, num_frames: int):
        self.starts, self.clip_len, self.num_frames = starts, clip_len, num_frames
        self.next_clip = 0
        self.frames: Optional[torch.Tensor] = None
        self.index = np.zeros(0, dtype=np.int64)

    @property
    def done(self) -> bool:
        return self.next_clip >= len(self.starts)

    def push(self, index: np.ndarray, frames: torch.Tensor) -> tuple[list[int], list[torch.Tensor]]:
        held = self.frames is not None and self.frames.shape[0] > 0
        self.frames = torch.cat([self.frames, frames]) if held else frames
        self.index = np.concatenate([self.index, index])
        nums, clips = [], []
        while not self.done:
            want = clip_frame_indices(self.starts[self.next_clip], self.clip_len, self.num_frames)
            if self.index.size == 0 or self.index[-1] < want[-1]:
                break
            clips.append(self._gather(np.searchsorted(self.index, want)))
            nums.append(self.next_clip)
            self.next_clip += 1
        keep_from = self.starts[self.next_clip] if not self.done else self.num_frames
        cut = int(np.searchsorted(self.index, keep_from))
        if cut:
            self.frames, self.index = self.frames[cut:], self.index[cut:]
        return nums, clips

    def _gather(self, pos: np.ndarray) -> torch.Tensor:
        """Frames at buffer positions `pos` (non-decreasing): runs of consecutive positions
        become slices, repeats (the padding of a short video) become expanded views."""
        parts, a = [], 0
        while a < len(pos):
            b = a + 1
            while b < len(pos) and pos[b] == pos[b - 1] + 1:
                b += 1
            parts.append(self.frames[int(pos[a]):int(pos[b - 1]) + 1])
            a = b
            while a < len(pos) and pos[a] == pos[a - 1]:  # repeated frame
                a += 1
            if a > b:
                parts.append(self.frames[int(pos[b - 1]):int(pos[b - 1]) + 1].expand(a - b, *self.frames.shape[1:]))
        return parts[0] if len(parts) == 1 else torch.cat(parts)
