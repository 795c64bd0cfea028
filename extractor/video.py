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


# The conversions InputMaker compiles. Each takes a whole contiguous buffer and the frame's
# size, and finds the planes in it itself, so that one graph serves every frame size, plane
# layout (as views of different strides, planes were variants compiled of their own), colour
# conversion (given as data: decode.yuv.conversion_params) and rotation (turned after them).

def packed_yuv_to_input(frames: torch.Tensor, h: int, w: int, params: torch.Tensor, prep: "Preprocessing",
                        out_dtype: torch.dtype) -> torch.Tensor:
    """(n, frame bytes) uint8, each row a frame's Y, U, V planes -> model input."""
    n, ch, cw = frames.shape[0], (h + 1) // 2, (w + 1) // 2
    y = frames[:, :h * w].view(n, h, w)
    u = frames[:, h * w:h * w + ch * cw].view(n, ch, cw)
    v = frames[:, h * w + ch * cw:h * w + 2 * ch * cw].view(n, ch, cw)
    return preprocess(yuv420_to_rgb(y, u, v, params), prep, out_dtype)


def nv12_to_input(surfaces: torch.Tensor, h: int, w: int, params: torch.Tensor, prep: "Preprocessing",
                  out_dtype: torch.dtype) -> torch.Tensor:
    """NVDEC's NV12 surfaces (n, rows, pitch) uint8, contiguous from offset 0, whose planes
    may be taller and wider than the h x w picture (decode.yuv.split_nv12) -> model input."""
    n, rows, pitch = surfaces.shape
    flat = surfaces.view(n, rows * pitch)
    chroma_at = rows * 2 // 3 * pitch  # below the surface's luma rows
    ch, cw = (h + 1) // 2, (w + 1) // 2
    # Gathered rather than sliced: a view's strides say whether the surface is wider than
    # the picture, and the graph compiled for one would not serve the other.
    luma = torch.arange(h, device=surfaces.device)[:, None] * pitch + torch.arange(w, device=surfaces.device)
    chroma = chroma_at + torch.arange(ch, device=surfaces.device)[:, None] * pitch \
        + 2 * torch.arange(cw, device=surfaces.device)
    y, u, v = flat[:, luma], flat[:, chroma], flat[:, chroma + 1]
    return preprocess(yuv420_to_rgb(y, u, v, params), prep, out_dtype)


def packed_rgb_to_input(frames: torch.Tensor, h: int, w: int, prep: "Preprocessing",
                        out_dtype: torch.dtype) -> torch.Tensor:
    """(n, frame bytes) uint8, each row an H x W x 3 RGB frame -> model input."""
    return preprocess(frames.view(frames.shape[0], h, w, 3), prep, out_dtype)


CONVERSIONS = (packed_yuv_to_input, nv12_to_input, packed_rgb_to_input)
RECOMPILE = "fail_on_recompile"  # in the message of a call that would compile once the worker runs


class InputMaker:
    """Turns decoded frames, wherever they were decoded, into model input (n, 3, S, S) in
    the model's dtype on the model's device: a decoder process's packed frames (copied to
    the GPU from its pinned buffer on a side stream) or NVDEC's NV12 surfaces. With
    `compile`, each of the three CONVERSIONS is one torch.compile'd graph over dynamic
    shapes, compiled by `warm_up`: nothing in a dataset (sizes, colours, rotations, which
    decoder) compiles another. Batches of one frame are doubled (a dimension of size 1 is
    one a compiled graph specialises on). Should a call need a graph after all once the
    worker runs (torch.compiler stance fail_on_recompile: no thread ever waits for a
    compilation), it runs eagerly instead, and `fallbacks` says why."""

    def __init__(self, device: torch.device, prep: "Preprocessing", dtype: torch.dtype, compile: bool):
        self.device, self.prep, self.dtype = device, prep, dtype
        self.cuda = device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        self.compiled = compile
        self.convert = {f: (torch.compile(f, dynamic=True) if compile else f) for f in CONVERSIONS}
        self.params: dict = {}  # YuvToRgb -> its conversion_params on the device
        self.fallbacks: dict[str, str] = {}  # conversion -> why it last ran eagerly
        self.fallback_calls = 0

    def _run(self, conversion, frames: torch.Tensor, *args) -> torch.Tensor:
        one = self.compiled and frames.shape[0] == 1
        if one:
            frames = torch.cat([frames, frames])
        try:
            x = self.convert[conversion](frames, *args)
        except RuntimeError as e:
            if RECOMPILE not in str(e):
                raise
            self.fallback_calls += 1
            self.fallbacks[conversion.__name__] = " ".join(str(e).split())[:400]
            x = conversion(frames, *args)
        return x[:1] if one else x

    def colour_params(self, colour) -> torch.Tensor:
        params = self.params.get(colour)
        if params is None:
            params = self.params[colour] = conversion_params(colour, self.device)
        return params

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
        prep = transposed(self.prep, info.turns)
        if colour is None:
            x = self._run(packed_rgb_to_input, frames, h, w, prep, self.dtype)
        else:
            x = self._run(packed_yuv_to_input, frames, h, w, self.colour_params(colour), prep, self.dtype)
        return upright(x, info.turns)

    def from_nv12(self, batch: torch.Tensor, info: VideoInfo) -> torch.Tensor:
        """NVDEC's NV12 frames (n, rows, pitch): the luma plane (surface height rows, then
        the interleaved chroma plane) may be taller and wider than the picture."""
        h, w = info.coded_size
        if batch.storage_offset() or not batch.is_contiguous():
            batch = batch.clone(memory_format=torch.contiguous_format)
        x = self._run(nv12_to_input, batch, h, w, self.colour_params(info.colour), transposed(self.prep, info.turns),
                      self.dtype)
        return upright(x, info.turns)

    @torch.inference_mode()
    def warm_up(self, size: tuple[int, int] = (360, 640), frames: int = 8, nv12: Optional[bool] = None):
        """Compiles each conversion now (start-up) rather than on the first video: one graph
        each, whatever the videos (dynamic shapes; the colour conversion is data). At a
        typical size, since the kernels' launch settings are tuned on the first call; with
        the turned preprocessing too where the model's input is not square. `nv12`: the NVDEC
        conversion too (default: on a GPU)."""
        h, w = size
        colour = YuvToRgb("bt709")
        for turns in ((0, 1) if self.prep.size[0] != self.prep.size[1] else (0,)):
            info = VideoInfo(frames, 30.0, *((w, h) if turns else (h, w)), rotation=90 * turns, colour=colour)
            for packed in (colour, None):
                size_bytes = packed_frame_bytes(h, w, packed)
                self.from_frames(torch.zeros(frames, size_bytes, dtype=torch.uint8, device=self.device), info, packed)
            if self.cuda if nv12 is None else nv12:  # a surface taller and wider than the picture, as NVDEC's often are
                rows = (h + 16) + (h + 16 + 1) // 2
                self.from_nv12(torch.zeros(frames, rows, w + 64, dtype=torch.uint8, device=self.device), info)


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
