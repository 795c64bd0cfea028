"""What the frame source knows of a video it decodes (or of one segment of a long one)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .common import FrameIndex, VideoInfo


@dataclass
class DecodeJob:
    """A claimed video, or a segment of one, as the frame source decodes it. The pipeline's
    VideoJob extends it with what the model side keeps (clips, features); the source makes
    its jobs with the factory it is given and touches only these fields."""
    path: Path
    name: str = ""  # what events and records call it: its path relative to --data_path
    vid: int = -1  # the frame source's number for it
    fault: Optional[str] = None  # test hook: a decoder fault to inject (launch/worker.py: injected_fault)
    info: Optional[VideoInfo] = None
    starts: list = field(default_factory=list)  # its clips' first frames
    needed: Optional[np.ndarray] = None  # the frame indices its clips use
    frames_done: int = 0  # of `needed`, delivered so far
    decoder: str = ""  # which decoders read it: pyav, decord, nvdec, or nvdec+pyav (some of each)
    decoder_note: str = ""  # why NVDEC did not take it, when it did not
    decode_s: float = 0.0
    t_claimed: float = field(default_factory=time.perf_counter)
    t_claim: float = 0.0  # monotonic time of the claim (the frame source paces claims with it)
    t_decode: float = 0.0
    t_probe: float = 0.0  # when it was sent to the prober (for NVDEC)
    segment_frames: int = 0  # frames per segment, if it is long enough to split (DecodePlan.split_frames)
    abandoned: bool = False  # a decoder died holding it (or one of its segments)
    # A long video is decoded in segments: each is a job of its own, with `root` its video,
    # making the video's clips from `first_clip` on; the video lists them in `parts`.
    parts: list = field(default_factory=list)
    root: Optional["DecodeJob"] = None
    first_clip: int = 0
    start: Optional[tuple] = None  # a segment's keyframe and timestamps (FrameIndex.start_of)
    index: Optional[FrameIndex] = None  # a split video's: where each of its frames is
    for_nvdec: bool = False  # a segment an NVDEC session may take
    nvdec_shift: Optional[int] = None  # a split video's NVDEC timestamps less its index's (nvdec.timestamp_shift)
    nvdec_refused: bool = False  # NVDEC stopped on it (or one of its segments): the CPU decodes the rest

    @property
    def video(self):
        """The whole video (itself, unless a segment)."""
        return self.root or self


def used(video: DecodeJob, decoder: str):
    """Adds a decoder to those that read the video (its `decoder`: "nvdec+pyav" for both)."""
    video.decoder = "+".join(sorted(set(filter(None, video.decoder.split("+"))) | {decoder}))
