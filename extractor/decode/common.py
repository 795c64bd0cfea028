"""What every decoder shares: the error a user sees, what is known of a video once it is
open, and the checks before opening. No torch here: decoder processes import it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np


class DecodeError(Exception):
    """A video that cannot be decoded; the message is the reason shown to the user."""


@dataclass
class VideoInfo:
    num_frames: int
    fps: float
    height: int  # of the frames as displayed (after rotation)
    width: int
    rotation: int = 0  # display rotation, degrees counterclockwise: 0, 90, 180 or 270
    # How its first frame converts to RGB: decode.color.YuvToRgb when the GPU reproduces
    # FFmpeg's conversion from its Y, U, V planes; None when FFmpeg converts it on the CPU.
    colour: Optional[object] = None
    codec: str = ""
    pix_fmt: str = ""
    interlaced: bool = False
    # Frames decoded after a keyframe but shown before it (the leading pictures of open
    # GOPs): None where the packets were not read. NVDEC decodes them differently from FFmpeg.
    leading_pictures: Optional[bool] = None
    # Frame durations that vary (timestamps not evenly spaced): None where the packets were
    # not read. NVDEC's frames differed from FFmpeg's on such Matroska files.
    variable_rate: Optional[bool] = None
    container: str = ""  # FFmpeg's name for the container format, where the packets were read

    @property
    def layout(self) -> str:
        """How its first frame travels: "yuv420p" planes, or "rgb24"."""
        return "yuv420p" if self.colour is not None else "rgb24"

    @property
    def turns(self) -> int:
        return self.rotation // 90

    @property
    def coded_size(self) -> tuple[int, int]:
        """(height, width) of the frames as decoded, before the display rotation."""
        return (self.width, self.height) if self.turns % 2 else (self.height, self.width)


@dataclass
class FrameIndex:
    """Where a video's frames are, read from its packets without decoding: frame i is the
    packet with the i-th smallest presentation timestamp (decord's numbering, and the
    order of decoding from the start on a clean file), and the keyframes a decoder can
    start from. Only made for files where every packet has its own timestamp."""
    pts: np.ndarray  # int64, increasing: frame i's presentation timestamp
    keyframes: np.ndarray  # int64, increasing: keyframes' presentation timestamps
    leading_pictures: bool = False  # see VideoInfo.leading_pictures

    def start_of(self, first: int, last: int) -> Optional[tuple[int, np.ndarray]]:
        """How a decoder reaches frames first..last: (the timestamp of the last keyframe at
        or before frame `first`, the timestamps of frames first..last, which it checks every
        frame against), or None when that keyframe is the first one (decode from the start)."""
        at = int(np.searchsorted(self.keyframes, self.pts[first], side="right")) - 1
        if at <= 0 or self.keyframes[at] <= self.pts[0]:
            return None
        return int(self.keyframes[at]), self.pts[first:last + 1].copy()

    def frame_at(self, pts):
        """The frame number(s) of presentation timestamp(s) of this index: their rank."""
        return np.searchsorted(self.pts, pts)


def packed_frame_bytes(height: int, width: int, colour) -> int:
    """Bytes of one frame as decoders pack it: Y, U, V planes (when it travels as YUV with
    a colour conversion) or RGB."""
    if colour is not None:
        return height * width + 2 * ((height + 1) // 2) * ((width + 1) // 2)
    return height * width * 3


def quarter_turns(rotation: float) -> int:
    """FFmpeg's display rotation (degrees the frame is turned counterclockwise to be shown
    upright) as a number of np.rot90 / torch.rot90 quarter turns, 0..3."""
    return int(round(rotation / 90.0)) % 4


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


def exit_description(exitcode: Optional[int]) -> str:
    """How a child process ended, from its exit code (negative: the signal that killed it)."""
    if exitcode is not None and exitcode < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def first_line(e: BaseException, limit: int = 200) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else type(e).__name__
    return msg[:limit]


def where(e: BaseException) -> str:
    """Where an exception was raised: its innermost Python frame, as 'at FILE:LINE FUNCTION'."""
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    return f"at {frames[-1].filename}:{frames[-1].lineno} {frames[-1].name}" if frames else "no traceback"
