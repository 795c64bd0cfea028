"""Clips: which frames each clip takes, the original script's rule. No torch here:
decoder processes use it too."""

from __future__ import annotations

import numpy as np


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
        return np.arange(min(starts[0], num_frames - 1), min(starts[-1] + clip_len, num_frames), dtype=np.int64)
    idx = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(clip_len)
    return np.unique(np.minimum(idx, num_frames - 1))


def segment_clips(starts: list[int], clip_len: int, segment_frames: int,
                  keyframes: np.ndarray = None) -> list[tuple[int, int]]:
    """A long video's clips in runs [first, end) of about `segment_frames` frames each,
    as even as whole clips allow: the segments that decoders take apart. With the video's
    `keyframes` (frame numbers), a segment begins, where one is near enough, with the first
    clip at or after a keyframe, since a decoder seeks to the keyframe before the segment
    and decodes every frame from there: up to a GOP of frames no clip uses."""
    if not starts:
        return []
    span = starts[-1] + clip_len - starts[0]
    parts = max(1, min(len(starts), -(-span // max(1, segment_frames))))
    bounds = np.linspace(0, len(starts), parts + 1).round().astype(int)
    if keyframes is not None and parts > 1:
        at_keyframes = np.unique(np.searchsorted(np.asarray(starts), np.asarray(keyframes)))
        reach = max(1, len(starts) // parts // 3)  # moving a bound by up to a third of a segment
        for j in range(1, parts):
            near = at_keyframes[(at_keyframes > bounds[j - 1]) & (at_keyframes < bounds[j + 1])
                                & (np.abs(at_keyframes - bounds[j]) <= reach)]
            if near.size:
                bounds[j] = near[np.argmin(np.abs(near - bounds[j]))]
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
