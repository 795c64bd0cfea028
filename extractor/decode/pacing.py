"""Claiming and pacing, FrameSource's half that decides when a worker claims another video:
while its main thread is short of frames and it holds fewer clips than its budget, so that
a worker holds about what keeps its GPU busy (the rest of the queue stays for the other
GPUs) and all workers run out of work together."""

from __future__ import annotations

import threading
import time

STARTING = 4  # before the model's rate is known: videos claimed and not yet seen frames of
# The main thread is short of frames while those queued for it make fewer clips than the
# model runs in QUEUED_SECONDS. A worker claims no video for a free decoder otherwise.
# (A count of chunks, as before 2026-11-27, held hacs-like 720p decoders idle: NVDEC's
# chunks are 2 clips of work there, and the worker's whole queue is about 0.2 s of it.)
QUEUED_SECONDS = 0.25
# Clips a worker holds (opened, not yet run by the model): at most its model's rate times
# HELD_SECONDS, or START_CLIPS before the rate is known. With the queue longest first,
# workers that top their holdings up to the same horizon run out of work together.
HELD_SECONDS = 8.0
START_CLIPS = 1024


class ClaimPacing:
    """Mixed into FrameSource (decode.source), whose fields it reads: `queue`, `cpu`,
    `sessions`, `plan`, `claim_video`, `new_job`, `exhausted`, `started`, `next_vid`."""

    def _init_pacing(self):
        self.starting: list = []  # claimed less than a second ago, no frames delivered yet
        # Clips of open videos the model has not run yet: added here when a video opens,
        # taken off by the main thread as it runs them (pipeline.ClaimPace), which also sets
        # the budget from the model's rate.
        self.clips_held = 0
        self.model_rate = 0.0  # the model's clips per second of its GPU time once measured (know_model_rate), else 0
        self.frames_queued = 0  # frames in "frames" events on `queue`
        self.clip_budget = START_CLIPS
        self.held_lock = threading.Lock()
        self.refused = ""  # why the last claim was not made

    def know_model_rate(self, clips_per_s: float):
        """The model's rate (clips per second of its GPU time), measured: claims follow the
        frames the main thread has queued against it, and the clip budget is HELD_SECONDS of it."""
        self.model_rate = clips_per_s
        self.clip_budget = max(START_CLIPS, int(clips_per_s * HELD_SECONDS))

    def hold(self, clips: int):
        with self.held_lock:
            self.clips_held += clips

    def _short_of_frames(self) -> bool:
        """Whether the main thread is short of frames (then the GPU waits for them soon): the
        frames queued make fewer clips than the model runs in QUEUED_SECONDS; before the
        model's rate is known, fewer chunks are queued than half the decoder processes. Before
        the worker is ready, always: each decoder gets a video to start on while the model
        compiles (the decoder processes stop when their buffers are full)."""
        if not self.started:
            return True
        if not self.model_rate:
            return self.queue.qsize() <= max(1, len(self.cpu) // 2)
        return self.frames_queued < QUEUED_SECONDS * self.model_rate * min(self.stride, self.clip_len)

    def _claim(self):
        """The next video from the worker's share of the queue, or None: when there is none,
        and also while the main thread has frames enough (the GPU is the bound: more videos
        would only wait here, held from the other GPUs), or, before the model's rate is known,
        while STARTING videos claimed less than a second ago have not delivered their first
        frames yet (they may be all that was missing). So a worker holds about as many videos
        as it takes to feed its GPU, not one per decoder (at start-up, before its model is
        ready, a few); and never more clips than `clip_budget`, so that at the end of the
        queue no GPU is left holding much more work than the others."""
        self.refused = "no videos left" if self.exhausted else "frames enough queued" \
            if not self._short_of_frames() else "clips held at the budget" if self.clips_held >= self.clip_budget else ""
        if self.refused:
            return None
        now = time.monotonic()
        self.starting = [job for job in self.starting if job.frames_done == 0 and now - job.t_claim < 1.0]
        unopened = sum(job.info is None for job in self.starting)
        if not self.model_rate and (len(self.starting) >= STARTING or unopened):
            self.refused = "claims not started yet"
            return None  # (before the model runs, one claim at a time: a worker that starts late holds little)
        claimed = self.claim_video()
        if claimed is None:
            self.exhausted, self.refused = True, "no videos left"
            return None
        path, fault, left = claimed
        job = self.new_job(path)
        job.vid, job.fault, job.t_claim = self.next_vid, fault, now
        job.segment_frames = self.plan.split_frames(tail=left is not None and left < len(self.cpu) + len(self.sessions))
        self.starting.append(job)
        self.next_vid += 1
        return job
