"""Finding videos, decoding each frame once, preprocessing, and sliding clips over frames."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .backbones import Preprocessing

VIDEO_EXTENSIONS = {
    ".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts", ".mts",
}


class DecodeError(Exception):
    """A video that cannot be decoded; the message is the reason shown to the user."""


def list_videos(data_path: Path) -> list[Path]:
    """Files under data_path (not recursive) whose extension is a video extension, sorted."""
    return sorted(p for p in data_path.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)


def clip_starts(num_frames: int, clip_len: int, stride: int) -> list[int]:
    """The original's rule: range(0, n - clip_len + 1, stride); a video shorter than one
    clip still gives one clip (padded with its last frame by `clip_frame_indices`)."""
    if num_frames <= 0:
        return []
    return list(range(0, num_frames - clip_len + 1, stride)) or [0]


def clip_frame_indices(start: int, clip_len: int, num_frames: int) -> list[int]:
    return [min(start + k, num_frames - 1) for k in range(clip_len)]


def needed_frames(starts: list[int], clip_len: int, num_frames: int) -> np.ndarray:
    """Sorted frame indices that belong to at least one clip: each is decoded once."""
    if not starts:
        return np.zeros(0, dtype=np.int64)
    if len(starts) == 1 or starts[1] - starts[0] <= clip_len:  # windows touch or overlap
        return np.arange(min(starts[-1] + clip_len, num_frames), dtype=np.int64)
    idx = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(clip_len)
    return np.unique(np.minimum(idx, num_frames - 1))


@dataclass
class VideoInfo:
    num_frames: int
    fps: float
    height: int  # of the frames as displayed (after rotation)
    width: int
    rotation: int = 0  # display rotation, degrees counterclockwise: 0, 90, 180 or 270


def quarter_turns(rotation: float) -> int:
    """FFmpeg's display rotation (degrees the frame is turned counterclockwise to be shown
    upright) as a number of np.rot90 / torch.rot90 quarter turns, 0..3."""
    return int(round(rotation / 90.0)) % 4


def mp4_display_rotation(path: Path) -> int:
    """The display rotation FFmpeg reports for an MP4/MOV file, read from the video track's
    `tkhd` matrix without loading FFmpeg (the NVDEC path must not load a second FFmpeg).
    0 for other containers or when the boxes cannot be read."""
    import math
    import struct

    def box_header(data: bytes, start: int, room: int) -> tuple[bytes, int, int]:
        """(type, header length, box size) of the box at data[start:]; size 0 means 'to the
        end', which is `room` bytes away."""
        size, kind = struct.unpack(">I4s", data[start:start + 8])
        if size == 1:
            return kind, 16, struct.unpack(">Q", data[start + 8:start + 16])[0]
        return kind, 8, room if size == 0 else size

    def boxes(data: bytes, start: int, end: int):
        while start + 8 <= end:
            kind, header, size = box_header(data, start, end - start)
            if size < header:
                return
            yield kind, start + header, min(start + size, end)
            start += size

    try:
        with open(path, "rb") as fh:
            moov, pos, end = None, 0, os.fstat(fh.fileno()).st_size
            while moov is None and pos + 8 <= end:  # top-level boxes, by seeking: only moov is read
                fh.seek(pos)
                kind, header, size = box_header(fh.read(16), 0, end - pos)
                if size < header:
                    return 0
                if kind == b"moov":
                    fh.seek(pos + header)
                    moov = fh.read(size - header)
                pos += size
        if moov is None:
            return 0
        for trak, ta, tb in boxes(moov, 0, len(moov)):
            if trak != b"trak":
                continue
            parts = {k: (x, y) for k, x, y in boxes(moov, ta, tb)}
            media = parts.get(b"mdia")
            handler = media and {k: (x, y) for k, x, y in boxes(moov, *media)}.get(b"hdlr")
            if not handler or moov[handler[0] + 8:handler[0] + 12] != b"vide" or b"tkhd" not in parts:
                continue
            t = parts[b"tkhd"][0]
            matrix_at = t + (4 + 32 + 8 + 8 if moov[t] == 1 else 4 + 20 + 8 + 8)
            m = struct.unpack(">9i", moov[matrix_at:matrix_at + 36])
            a_, b_, c_, d_ = (x / 65536.0 for x in (m[0], m[1], m[3], m[4]))
            angle = math.degrees(math.atan2(b_ / (math.hypot(b_, d_) or 1), a_ / (math.hypot(a_, c_) or 1)))
            return quarter_turns(-angle) * 90
    except (OSError, struct.error):
        return 0
    return 0


def check_readable(path: Path) -> None:
    """The reasons a file cannot even be opened, as DecodeError."""
    if path.is_dir():
        raise DecodeError("is a directory")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DecodeError(f"cannot stat file: {e.strerror}") from None
    if size == 0:
        raise DecodeError("empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise DecodeError("permission denied")


def forward_chunks(indices: np.ndarray, chunk_size: int, info: VideoInfo,
                   read: Callable[[int], np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The CPU decoders' chunk loop: read(i) returns frame i (uint8 (H, W, 3)), called with
    increasing i; yields (indices, frames) chunks; every failure becomes a DecodeError."""
    h, w, want, a = info.height, info.width, -1, 0
    try:
        while a < len(indices):
            idx = indices[a:a + chunk_size]
            out = np.empty((len(idx), h, w, 3), dtype=np.uint8)
            for k, want in enumerate(idx):
                frame = read(int(want))
                if frame.shape != out.shape[1:]:
                    raise DecodeError(f"frame {int(want)} has shape {frame.shape}, expected {out.shape[1:]}")
                out[k] = frame
            a += len(idx)
            yield idx, out
    except DecodeError:
        raise
    except StopIteration:
        raise DecodeError(f"stream ended before frame {int(want)} of {info.num_frames}") from None
    except Exception as e:
        raise DecodeError(f"decoding failed near frame {int(want)} of {info.num_frames} ({first_line(e)})") from None


class VideoDecoder:
    """Decodes a video's frames once, in order, in chunks of uint8 RGB (n, H, W, 3), with
    FFmpeg through PyAV.

    The frames are pixel for pixel decord's (the original script's decoder: same FFmpeg
    decoding and RGB conversion, checked by the tests), but decoding is pulled frame by
    frame, so memory stays flat: decord's VideoReader, measured here, kept decoding ahead
    of a slower consumer (5 GB held for a 60 s 1080p file, bench/decoder_memory.py) and its
    get_batch kept ~10 MB per frame. Every failure becomes a DecodeError with a reason a
    person can act on."""

    name = "pyav"

    def __init__(self, path: Path, num_threads: int = 0):
        self.path = path
        check_readable(path)
        import av

        try:
            self.container = av.open(str(path))
        except Exception as e:
            raise DecodeError(f"not a decodable video ({first_line(e)})") from None
        if not self.container.streams.video:
            self.close()
            raise DecodeError("no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.stream.thread_count = num_threads
        rate = self.stream.average_rate or self.stream.guessed_rate or 0
        fps = float(rate)
        num_frames = int(self.stream.frames or 0)
        if num_frames <= 0 and self.stream.duration and fps:  # containers without a frame count
            num_frames = int(round(float(self.stream.duration * self.stream.time_base) * fps))
        ctx = self.stream.codec_context
        if num_frames <= 0:
            self.close()
            raise DecodeError("no video frames")
        # The first frame tells the display rotation (phone videos); it is kept for chunks().
        self._decoded = self._demuxed_frames()
        try:
            self._first = next(self._decoded)
        except StopIteration:
            self.close()
            raise DecodeError("no video frames") from None
        except Exception as e:
            self.close()
            raise DecodeError(f"not a decodable video ({first_line(e)})") from None
        self.turns = quarter_turns(getattr(self._first, "rotation", 0) or 0)
        h, w = int(ctx.height), int(ctx.width)
        self.info = VideoInfo(num_frames, fps, *((w, h) if self.turns % 2 else (h, w)), rotation=self.turns * 90)

    def chunks(self, indices: np.ndarray, chunk_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields (frame indices, uint8 frames (n, H, W, 3)) for `indices` (sorted) in order;
        frames not in `indices` are decoded (as they must be) but not converted to RGB."""
        frames, position = self._frames(), 0

        def read(want: int) -> np.ndarray:
            nonlocal position
            while True:
                frame = next(frames)
                position += 1
                if position - 1 == want:
                    break
            rgb = frame.to_ndarray(format="rgb24")
            return np.rot90(rgb, self.turns) if self.turns else rgb  # shown upright, as a player would

        return forward_chunks(indices, chunk_size, self.info, read)

    def _frames(self):
        if self._first is None:
            raise DecodeError("chunks() can be read once per decoder")
        first, self._first = self._first, None
        yield first
        yield from self._decoded

    def _demuxed_frames(self):
        for packet in self.container.demux(self.stream):
            yield from packet.decode()

    def close(self):
        container, self.container = getattr(self, "container", None), None
        if container is not None:
            container.close()


class DecordDecoder:
    """The original script's decoder, decord, read forward frame by frame. Same frames as
    VideoDecoder, faster in threads, but decord decodes ahead of a slow consumer without
    bound (5 GB held for a 60 s 1080p file, bench/decoder_memory.py): for short videos only."""

    name = "decord"

    def __init__(self, path: Path, num_threads: int = 0):
        self.path = path
        check_readable(path)
        import decord

        try:
            self.reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=num_threads)
            num_frames = len(self.reader)
            fps = float(self.reader.get_avg_fps())
            if num_frames > 0:
                h, w, channels = self.reader[0].shape
                self.reader.seek(0)
                if channels != 3:  # decord 0.6 on a video with a display rotation
                    raise DecodeError(f"decord returns {channels}-channel frames for this video (it mishandles "
                                      "rotated videos): --decoder auto or cpu reads it")
            else:
                h = w = 0
        except DecodeError:
            raise
        except Exception as e:  # decord raises DECORDError / RuntimeError with multi-line text
            raise DecodeError(f"not a decodable video ({first_line(e)})") from None
        if num_frames <= 0:
            raise DecodeError("no video frames")
        self.info = VideoInfo(num_frames, fps, h, w)

    def chunks(self, indices: np.ndarray, chunk_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """As VideoDecoder.chunks, reading forward frame by frame. Not get_batch: it re-seeks
        on every call and, measured on a 1080p file, ran 5x slower (44 vs 219 frames/s) while
        keeping ~10 MB per decoded frame alive."""
        position = -1

        def read(want: int) -> np.ndarray:
            nonlocal position
            if position < 0:  # inside the loop, so that a failure is a DecodeError
                self.reader.seek(0)
                position = 0
            if want > position:
                self.reader.skip_frames(want - position)
                position = want
            position += 1
            return self.reader.next().asnumpy()

        return forward_chunks(indices, chunk_size, self.info, read)

    def close(self):
        self.reader = None


_NVDEC_LOCK = threading.Lock()  # decoder sessions are created and destroyed one at a time


def _torch_cuda_context(gpu_id: int) -> dict:
    """PyTorch's CUDA context and this thread's stream, for the decoder to share (where the
    CUDA driver bindings are installed); otherwise the decoder picks its own."""
    torch.cuda.set_device(gpu_id)
    torch.cuda.synchronize(gpu_id)  # makes the device's primary context current in this thread
    try:
        from cuda.bindings import driver
    except ImportError:
        return {}
    err, ctx = driver.cuCtxGetCurrent()
    if int(err) != 0 or not int(ctx):
        return {}
    return {"cuda_context": int(ctx), "cuda_stream": torch.cuda.current_stream(gpu_id).cuda_stream}


class NvdecDecoder:
    """The GPU's video decoder (NVDEC, through PyNvVideoCodec): frames come out as RGB uint8
    (n, H, W, 3) tensors already on the GPU. Same interface as VideoDecoder. Its YUV->RGB
    conversion is NVIDIA's, not FFmpeg's, so pixels (and features) differ slightly from the
    CPU decoder's; use it where the CPU cannot decode fast enough."""

    name = "nvdec"

    def __init__(self, path: Path, gpu_id: int):
        self.path = path
        check_readable(path)
        import PyNvVideoCodec as nvc

        try:
            with _NVDEC_LOCK:
                self.decoder = nvc.SimpleDecoder(str(path), gpu_id=gpu_id, use_device_memory=True,
                                                 output_color_type=nvc.OutputColorType.RGB,
                                                 **_torch_cuda_context(gpu_id))
            meta = self.decoder.get_stream_metadata()
            self.turns = mp4_display_rotation(path) // 90
            h, w = int(meta.height), int(meta.width)
            self.info = VideoInfo(int(meta.num_frames), float(meta.average_fps),
                                  *((w, h) if self.turns % 2 else (h, w)), rotation=self.turns * 90)
        except Exception as e:
            raise DecodeError(f"not decodable by NVDEC ({first_line(e)})") from None
        if self.info.num_frames <= 0:
            raise DecodeError("no video frames")

    def chunks(self, indices: np.ndarray, chunk_size: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Decodes forward from frame 0 in chunks, keeping the frames in `indices`."""
        position, last = 0, int(indices[-1]) if len(indices) else -1
        while position <= last:
            try:
                frames = self.decoder.get_batch_frames(chunk_size)
            except Exception as e:
                raise DecodeError(f"NVDEC decoding failed near frame {position} ({first_line(e)})") from None
            if not frames:
                raise DecodeError(f"stream ended at frame {position} of {self.info.num_frames}")
            ids = np.arange(position, position + len(frames))
            position += len(frames)
            keep = np.isin(ids, indices)
            if keep.any():
                # copy out of the decoder's surfaces, which the next call reuses
                batch = torch.stack([torch.from_dlpack(f) for f, k in zip(frames, keep) if k])
                if self.turns:
                    batch = torch.rot90(batch, self.turns, dims=(1, 2))
                yield ids[keep], batch

    def close(self):
        with _NVDEC_LOCK:
            self.decoder = None


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else type(e).__name__
    return msg[:200]


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
        self.frames = frames if self.frames is None else torch.cat([self.frames, frames])
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
