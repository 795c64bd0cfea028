"""Finding videos, turning decoded frames into model input, and sliding clips over frames."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .clips import clip_frame_indices
from .decode.color import YuvToRgb
from .decode.common import VideoInfo, packed_frame_bytes
from .decode.yuv import conversion_params, yuv420_to_rgb

if TYPE_CHECKING:
    from .backbones import Preprocessing

VIDEO_EXTENSIONS = {
    ".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts", ".mts",
}


def list_videos(data_path: Path) -> list[Path]:
    """Files under data_path (not recursive) whose extension is a video extension, sorted."""
    return sorted(p for p in data_path.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)


def preprocess(frames: torch.Tensor, prep: "Preprocessing", out_dtype: torch.dtype,
               norm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """uint8 (n, H, W, 3) -> (n, 3, h, w): RGB/255, bilinear (or the backbone's bicubic)
    resize of the whole frame (align_corners=False; antialiased only if the backbone asks) in
    float32, optional mean/std (prep's, or `norm`: normalization_tensor's); out_dtype last.

    For LLaVA-ViT this is the original script's preprocessing, frame by frame; it runs
    wherever `frames` lives (on the GPU in a CUDA run)."""
    x = frames.permute(0, 3, 1, 2).float().div_(255.0)
    if tuple(x.shape[-2:]) != tuple(prep.size):
        x = F.interpolate(x, size=prep.size, mode=prep.mode, align_corners=False, antialias=prep.antialias)
    x = x.contiguous()  # interpolate keeps the decoder's channels-last strides; the model wants NCHW
    if norm is None and prep.mean is not None:
        norm = normalization_tensor(prep, x.device)
    if norm is not None:
        x = (x - norm[0].view(1, 3, 1, 1)) / norm[1].view(1, 3, 1, 1)
    return x.to(out_dtype)


def normalization_tensor(prep: "Preprocessing", device: torch.device) -> Optional[torch.Tensor]:
    """(2, 3) float32: the mean and std of `prep` as data, or None for no normalisation."""
    return None if prep.mean is None else torch.tensor([prep.mean, prep.std], dtype=torch.float32, device=device)


def upright(x: torch.Tensor, turns: int) -> torch.Tensor:
    """Model input (n, 3, h, w) of frames as decoded, turned `turns` quarter turns
    counterclockwise (FFmpeg's display rotation). Turning the resized frames gives the input
    of resizing the turned frames (bilinear sampling is symmetric) to float rounding, keeps
    the rotation out of the compiled conversions, and moves 224 x 224 pixels, not the frame."""
    return torch.rot90(x, turns, dims=(2, 3)).contiguous() if turns else x


def transposed(prep: "Preprocessing", turns: int) -> "Preprocessing":
    """The preprocessing of frames turned upright after it: the size is the upright one turned back."""
    if turns % 2 == 0 or prep.size[0] == prep.size[1]:
        return prep
    return replace(prep, size=prep.size[::-1])


# The conversion InputMaker compiles takes a whole contiguous buffer of frames, the frame's
# size, and where its planes lie in it as data (`layout`), so that one graph serves every
# frame size, plane layout (packed planes from a decoder process, NVDEC's NV12 surfaces of
# any pitch), colour conversion (data too: decode.yuv.conversion_params) and rotation (turned
# after it). Given as views, planes of other strides were graphs of their own.

def plane_layout(packed: bool, h: int, w: int, rows: int = 0, pitch: int = 0) -> tuple[int, ...]:
    """Where a frame's planes lie in its row of bytes: (luma row pitch, U offset, V offset,
    chroma row pitch, chroma column step). Packed planes (Y, then U, then V, each without
    padding), or an NV12 surface `rows` x `pitch` (luma rows * 2 // 3 of them, then U and V
    interleaved)."""
    ch, cw = (h + 1) // 2, (w + 1) // 2
    if packed:
        return w, h * w, h * w + ch * cw, cw, 1
    chroma = rows * 2 // 3 * pitch
    return pitch, chroma, chroma + 1, pitch, 2


def yuv_to_input(frames: torch.Tensor, h: int, w: int, layout: torch.Tensor, params: torch.Tensor,
                 norm: Optional[torch.Tensor], prep: "Preprocessing", out_dtype: torch.dtype) -> torch.Tensor:
    """(n, bytes per frame) uint8, each row a frame's Y, U, V planes where `layout` (int64,
    `plane_layout`) says -> model input. The planes are gathered, never materialised whole:
    compiled, only the pixels the resize samples are read and converted. The mean and std
    come as data (`norm`, which wins over prep's): compiled, prep's floats would be traced as
    symbols of their own (and its analysis restarted for them)."""
    ch, cw = (h + 1) // 2, (w + 1) // 2
    y_pitch, u_at, v_at, c_pitch, c_step = layout.unbind()
    rows, cols = torch.arange(h, device=frames.device), torch.arange(w, device=frames.device)
    luma = rows[:, None] * y_pitch + cols
    chroma = rows[:ch, None] * c_pitch + cols[:cw] * c_step
    y, u, v = frames[:, luma], frames[:, u_at + chroma], frames[:, v_at + chroma]
    return preprocess(yuv420_to_rgb(y, u, v, params), prep, out_dtype, norm)


RECOMPILE = "fail_on_recompile"  # in the message of a call that would compile once the worker runs


class InputMaker:
    """Turns decoded frames, wherever they were decoded, into model input (n, 3, S, S) in
    the model's dtype on the model's device: a decoder process's packed frames (copied to
    the GPU from its pinned buffer on a side stream) or NVDEC's NV12 surfaces.

    With `compile`, the YUV conversion (nearly every frame) is one torch.compile'd graph over
    dynamic shapes, compiled by `warm_up`: nothing in a dataset (sizes, colours, rotations,
    which decoder) compiles another. Batches of one frame are doubled (a dimension of size 1
    is one a compiled graph specialises on). Should a call need a graph after all once the
    worker runs (torch.compiler stance fail_on_recompile: no thread ever waits for a
    compilation), it runs eagerly instead, and `fallbacks` says why. Frames FFmpeg made RGB
    on the CPU (10-bit, 4:2:2, 4:4:4, odd heights: decode.color) take an eager resize, which
    costs no compilation at start-up."""

    def __init__(self, device: torch.device, prep: "Preprocessing", dtype: torch.dtype, compile: bool):
        self.device, self.prep, self.dtype = device, prep, dtype
        self.cuda = device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        self.compiled = compile
        self.yuv = torch.compile(yuv_to_input, dynamic=True) if compile else yuv_to_input
        self.norm = normalization_tensor(prep, device)
        self.bare_prep = replace(prep, mean=None, std=None)  # (what the conversion is given: see yuv_to_input)
        self.on_device: dict = {}  # colour conversions and plane layouts as tensors on the device, by value
        self.fallbacks: dict[str, str] = {}  # why a conversion last ran eagerly
        self.fallback_calls = 0

    def _on_device(self, key, make) -> torch.Tensor:
        t = self.on_device.get(key)
        if t is None:
            t = self.on_device[key] = make()
        return t

    def _yuv(self, frames: torch.Tensor, h: int, w: int, layout: tuple, colour, turns: int) -> torch.Tensor:
        one = self.compiled and frames.shape[0] == 1
        if one:
            frames = torch.cat([frames, frames])
        layout_t = self._on_device(layout, lambda: torch.tensor(layout, dtype=torch.int64, device=self.device))
        params = self._on_device(colour, lambda: conversion_params(colour, self.device))
        args = (frames, h, w, layout_t, params, self.norm, transposed(self.bare_prep, turns), self.dtype)
        try:
            x = self.yuv(*args)
        except RuntimeError as e:
            if RECOMPILE not in str(e):
                raise
            self.fallback_calls += 1
            self.fallbacks["yuv_to_input"] = " ".join(str(e).split())[:400]
            x = yuv_to_input(*args)
        return upright(x[:1] if one else x, turns)

    # The public methods run in inference mode whoever calls them: the compiled graph's
    # guards hold for inference tensors without autograd (anything else would compile anew).

    @torch.inference_mode()
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
            frames = host.clone()  # (an inference tensor, as on the GPU)
        return self.from_frames(frames.view(count, -1), info, colour), copied

    @torch.inference_mode()
    def from_frames(self, frames: torch.Tensor, info: VideoInfo, colour) -> torch.Tensor:
        """(n, frame bytes) uint8, each row one packed frame (Y, U, V planes, or RGB)."""
        h, w = info.coded_size
        if colour is None:
            rgb = frames.reshape(frames.shape[0], h, w, 3)
            return upright(preprocess(rgb, transposed(self.prep, info.turns), self.dtype), info.turns)
        return self._yuv(frames, h, w, plane_layout(True, h, w), colour, info.turns)

    @torch.inference_mode()
    def from_nv12(self, batch: torch.Tensor, info: VideoInfo) -> torch.Tensor:
        """NVDEC's NV12 frames (n, rows, pitch): the luma plane (surface height rows, then
        the interleaved chroma plane) may be taller and wider than the picture."""
        h, w = info.coded_size
        n, rows, pitch = batch.shape
        return self._yuv(batch.reshape(n, rows * pitch), h, w, plane_layout(False, h, w, rows, pitch), info.colour,
                         info.turns)

    @torch.inference_mode()
    def warm_up(self, size: tuple[int, int] = (360, 640), frames: int = 8):
        """Compiles the YUV conversion now (start-up) rather than on the first video: one
        graph, whatever the videos. At a typical size, since the kernels' launch settings are
        tuned on the first call; the turned preprocessing too where the model's input is not
        square."""
        if not self.compiled:
            return
        h, w = size
        colour = YuvToRgb("bt709")
        for turns in ((0, 1) if self.prep.size[0] != self.prep.size[1] else (0,)):
            info = VideoInfo(frames, 30.0, *((w, h) if turns else (h, w)), rotation=90 * turns, colour=colour)
            packed = torch.zeros(frames, packed_frame_bytes(h, w, colour), dtype=torch.uint8, device=self.device)
            self.from_frames(packed, info, colour)


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
