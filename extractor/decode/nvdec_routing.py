"""The NVDEC sessions' side of FrameSource: new claims go to the prober (a decoder process
that says whether NVDEC can decode a video, and splits long ones), then to a free session;
segments NVDEC may take go to free sessions; a session that stops hands what it did not
deliver to the CPU decoder processes."""

from __future__ import annotations

import threading
import time
from typing import Optional

from .common import FrameIndex, VideoInfo
from .gpu import nvdec_cannot
from .job import used
from .nvdec import SPENT


class NvdecRouting:
    """Mixed into FrameSource (decode.source), whose fields and methods it uses: `backlog`,
    `jobs`, `queue`, `report`, `plan`, `device`, `_claim`, `_opened`, `_wake`,
    `_short_of_frames`, `_start_decoder`."""

    def _init_nvdec(self, maker):
        self.prober = None  # a CpuDecoder that only probes, when there are sessions
        self.probing: list = []  # jobs waiting for, or in, the prober
        self.sessions: list = []
        self.session_lock = threading.Lock()
        self.probes = {"count": 0, "total_s": 0.0, "longest_s": 0.0}  # the prober's answers, claim to answer
        # Session-seconds NVDEC sessions were idle, by why no video was claimed for them
        # (ClaimPacing._claim's `refused`), for the worker's summary.
        self.nvdec_idle: dict[str, float] = {}
        self.idle_sessions, self.idle_why, self.t_idle = 0, "", 0.0
        if self.plan.nvdec_sessions:
            from .nvdec import NvdecSession

            self.prober = self._start_decoder(-1)
            self.sessions = [NvdecSession(i, self.device, self, self.plan, maker)
                             for i in range(self.plan.nvdec_sessions)]
        self.all_sessions = list(self.sessions)  # (a broken one leaves `sessions`)
        # Free from the start: while the model compiles, the prober already opens a video for
        # each session, which waits in its inbox until the sessions start (start_sessions).
        self.free_sessions: list = list(self.sessions)
        self.started = False  # whether the worker is ready: its main thread takes frames, its sessions run

    def start_sessions(self):
        """The worker is ready: NVDEC sessions start on the videos already waiting for them
        (their conversions must be compiled first), and claims follow the main thread's need."""
        with self.session_lock:
            for s in self.sessions:
                s.start()
        self.started = True
        self._wake()

    def nvdec_use(self) -> dict:
        """For the worker's summary: its NVDEC sessions, their seconds with a job, the probes."""
        spent = {what: sum(s.spent[what] for s in self.all_sessions) for what in SPENT}
        return {"sessions": self.plan.nvdec_sessions, "busy_s": sum(s.busy_s for s in self.all_sessions), "spent": spent,
                "idle_s": dict(self.nvdec_idle), **self.probes}

    def session_free(self, session):
        with self.session_lock:
            self.free_sessions.append(session)
        self._wake()

    def session_broken(self, session, reason: str):
        """An NVDEC session that cannot run at all leaves the set (the others, and the
        CPU decoders, carry on); the CPU decoders take the jobs waiting in its inbox."""
        with self.session_lock:
            self.sessions.remove(session)
            if session in self.free_sessions:
                self.free_sessions.remove(session)
            waiting = []
            while not session.inbox.empty():
                waiting.append(session.inbox.get_nowait())
        self.report({"type": "warning", "video": None, "msg": f"an NVDEC session could not start ({reason})"})
        for job in filter(None, waiting):
            self.nvdec_stopped(job, -1, f"its NVDEC session could not start ({reason})")
        self._wake()

    def nvdec_stopped(self, job, delivered: int, reason: str):
        """An NVDEC session stopped on a video or segment after delivering its frames up to
        `delivered` (-1: none): a CPU decoder process decodes the rest, from the keyframe
        before its first frame still needed where the video has an index (a split video),
        else from the start. The video's other segments go to the CPU too."""
        video = job.video
        if delivered >= 0:
            job.needed = job.needed[job.needed > delivered]
            index = video.index
            job.start = index.start_of(int(job.needed[0]), int(job.needed[-1])) if index is not None else None
        said = video.nvdec_refused
        video.nvdec_refused = True
        for part in [job, *video.parts]:
            part.for_nvdec = False
        at = f"after frame {delivered}" if delivered >= 0 else "before its first frames"
        note = f"NVDEC stopped {at}" + (f" of a segment ({reason})" if job.root is not None else f" ({reason})")
        video.decoder_note = "; ".join(filter(None, [video.decoder_note, note]))
        if not said:
            self.report({"type": "warning", "video": video.name, "msg": f"{note}: a CPU decoder takes it over"})
        with self.session_lock:
            self.backlog.insert(0, job)
        self._wake()

    def _feed_nvdec_sessions(self):
        """New claims for free NVDEC sessions go to the prober first (it says whether NVDEC can
        decode them, and splits long ones). Counts the time sessions stay idle, by why."""
        now, why = time.perf_counter(), ""
        self.nvdec_idle[self.idle_why] = self.nvdec_idle.get(self.idle_why, 0.0) + self.idle_sessions * (now - self.t_idle)
        while self.prober is not None:
            with self.session_lock:
                free = len(self.free_sessions) - len(self.probing)
                # NVDEC declined many (segments it may take do not count): do not hoard videos
                full = sum(not job.for_nvdec for job in self.backlog) >= len(self.cpu)
            why = "" if free <= 0 else "videos NVDEC declined waiting" if full else \
                "frames enough queued" if not self._short_of_frames() else ""
            if why or free <= 0:
                break
            job = self._claim()
            if job is None:
                why = self.refused
                break
            self.probing.append(job)
            self.jobs[job.vid] = job
            job.t_probe = time.perf_counter()
            self.prober.send(("probe", job.vid, str(job.path), job.segment_frames))
        if self.prober is not None:
            self.prober.job = self.probing[0] if self.probing else None
        with self.session_lock:  # sessions now idle that no video is being probed for, and why (once they run)
            self.idle_sessions = max(0, len(self.free_sessions) - len(self.probing)) if self.started else 0
        self.idle_why, self.t_idle = why or "waiting for the prober", now

    def _segments_to_nvdec(self):
        """Free NVDEC sessions take the segments in the backlog that NVDEC can decode, while
        the main thread is short of frames (as for new claims: NVDEC's threads cost the
        thread that feeds the GPU some of its time, which a run the model bounds cannot spare)."""
        if not self._short_of_frames():
            return
        with self.session_lock:
            while self.free_sessions:
                job = next((j for j in self.backlog if j.for_nvdec), None)
                if job is None:
                    return
                self.backlog.remove(job)
                used(job.video, "nvdec")
                self.free_sessions.pop().inbox.put(job)

    def _probed(self, job, info: Optional[VideoInfo], reason: str, index: Optional[FrameIndex]):
        took = time.perf_counter() - job.t_probe
        self.probes["count"] += 1
        self.probes["total_s"] += took
        self.probes["longest_s"] = max(self.probes["longest_s"], took)
        self.probing.remove(job)
        self.jobs.pop(job.vid, None)
        if info is None:
            if job in self.starting:
                self.starting.remove(job)
            self.queue.put(("fail", job, reason))
            return
        if index is not None:  # long: CPU processes decode it in segments
            self._opened(job, info, index)
            return
        why = nvdec_cannot(info)
        with self.session_lock:
            if why or not self.free_sessions:
                job.decoder_note = f"not for NVDEC: {why}" if why else ""
                self.backlog.append(job)
                return
        self._opened(job, info)
        with self.session_lock:  # (a session that breaks hands its inbox back under this lock)
            session = self.free_sessions.pop() if self.free_sessions else None
            if session is not None:
                used(job, "nvdec")
                session.inbox.put(job)
            else:
                self.backlog.append(job)
