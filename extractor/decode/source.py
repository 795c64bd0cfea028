"""A worker's frame source: its CPU decoder processes and NVDEC sessions, fed from the
worker's claims, all delivering chunks of frames to one queue that the worker's main
thread reads.

Events on `queue` (what the main thread sees):
  ("open", job)                   the video is open: job.info says what it is, job.parts its segments
  ("frames", job, indices, chunk) frames `indices` of the video (or of one of its segments: job.root
                                  is the video); chunk.to_input(...) makes them model input
  ("decoded", job)                every frame the clips of the video (or segment) need has been delivered
  ("fail", job, reason)           the video (or a segment, and so the video) cannot be decoded
  ("abandon", job)                its decoder died: drop it (the supervisor tries it again or records it)
  ("exit", None)                  nothing left to decode
A long video is decoded in segments, each a run of its clips, on several decoders at once
(FrameSource._split): CPU decoder processes and NVDEC sessions both take them. Its
features are the same as in one piece. Whatever an NVDEC session cannot finish, a CPU
decoder process finishes from the first frame it did not deliver.
One thread here (`_serve`) claims videos for idle decoders, reads what the decoder
processes send, restarts one that dies, kills one that hangs and tells the supervisor that
decoding moves; another gives buffer space back once the GPU has copied it."""

from __future__ import annotations

import queue
import threading
import time
from multiprocessing import Pipe
from multiprocessing.connection import wait
from typing import Callable, Optional

import torch

from ..clips import clip_starts, needed_frames, segment_clips
from .common import FrameIndex, VideoInfo, where
from .nvdec import SPENT, nvdec_cannot
from .plan import DecodePlan
from .processes import CpuDecoder, HostChunk

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
PROBER_BUFFER_BYTES = 1 << 20


class FrameSource:
    def __init__(self, plan: DecodePlan, clip_len: int, stride: int, decode_timeout_s: float,
                 claim: Callable, report: Callable, new_job: Callable, device: torch.device, maker=None):
        self.plan, self.clip_len, self.stride, self.timeout = plan, clip_len, stride, decode_timeout_s
        self.claim_video, self.report, self.new_job, self.device = claim, report, new_job, device
        self.cuda = device.type == "cuda"
        if self.cuda and device.index is None:
            self.device = device = torch.device("cuda", torch.cuda.current_device())
        self.queue: queue.Queue = queue.Queue()
        self.stopping = False
        self.exhausted = False  # the last claim found the queue empty
        self.backlog: list = []  # jobs for the CPU decoders (NVDEC declined them)
        self.jobs: dict[int, object] = {}  # vid -> job, for the jobs in a decoder process (or its prober)
        self.starting: list = []  # claimed less than a second ago, no frames delivered yet
        self.next_vid = 0
        # Clips of open videos the model has not run yet: added here when a video opens,
        # taken off by the main thread as it runs them (pipeline.ClaimPace), which also sets
        # the budget from the model's rate.
        self.clips_held = 0
        self.model_rate = 0.0  # the model's clips per second of its GPU time once measured (know_model_rate), else 0
        self.frames_queued = 0  # frames in "frames" events on `queue`
        self.frames_by_decoder = {"cpu": 0, "nvdec": 0}  # frames delivered, for the worker's summary
        self.probes = {"count": 0, "total_s": 0.0, "longest_s": 0.0}  # the prober's answers, claim to answer
        # Session-seconds NVDEC sessions were idle, by why no video was claimed for them
        # (FrameSource._claim's `refused`), for the worker's summary.
        self.nvdec_idle: dict[str, float] = {}
        self.idle_sessions, self.idle_why, self.t_idle, self.refused = 0, "", 0.0, ""
        self.clip_budget = START_CLIPS
        self.held_lock = threading.Lock()
        self.retired: list[CpuDecoder] = []  # dead decoders whose buffers chunks may still use
        self.failures_in_a_row = 0
        self.wake_recv, self.wake_send = Pipe(duplex=False)
        # A thread pins the decoders' buffers while the model loads and compiles
        # (cudaHostRegister drops the GIL), off the start-up's critical path.
        self.pinner = threading.Thread(target=self._pin_buffers, daemon=True, name="pin")
        self.cpu = [self._start_decoder(i) for i in range(plan.cpu_decoders)]
        if self.cuda:
            self.pinner.start()
        self.prober: Optional[CpuDecoder] = None
        self.probing: list = []  # jobs waiting for, or in, the prober
        self.sessions: list = []
        self.session_lock = threading.Lock()
        if plan.nvdec_sessions:
            from .nvdec import NvdecSession

            self.prober = self._start_decoder(-1)
            self.sessions = [NvdecSession(i, device, self, plan, maker) for i in range(plan.nvdec_sessions)]
        self.all_sessions = list(self.sessions)  # (a broken one leaves `sessions`)
        # Free from the start: while the model compiles, the prober already opens a video for
        # each session, which waits in its inbox until the sessions start (start_sessions).
        self.free_sessions: list = list(self.sessions)
        self.started = False  # whether the worker is ready: its main thread takes frames, its sessions run
        self.returns: queue.Queue = queue.Queue()
        self.returner = threading.Thread(target=self._give_back_loop, daemon=True, name="give-back")
        self.returner.start()
        self.thread = threading.Thread(target=self._serve_loop, daemon=True, name="frame-source")
        self.thread.start()

    # ----------------------------------------------------------------- the main thread's side

    def start_sessions(self):
        """The worker is ready: NVDEC sessions start on the videos already waiting for them
        (their conversions must be compiled first), and claims follow the main thread's need."""
        with self.session_lock:
            for s in self.sessions:
                s.start()
        self.started = True
        self._wake()

    def know_model_rate(self, clips_per_s: float):
        """The model's rate (clips per second of its GPU time), measured: claims follow the
        frames the main thread has queued against it, and the clip budget is HELD_SECONDS of it."""
        self.model_rate = clips_per_s
        self.clip_budget = max(START_CLIPS, int(clips_per_s * HELD_SECONDS))

    def give_back_after(self, copied: Optional[torch.cuda.Event], decoder: CpuDecoder, offset: int):
        """Hands a chunk's buffer space back to its decoder once `copied` (the GPU copy out of
        it) has completed; at once when there is no copy in flight."""
        self.returns.put((copied, decoder, offset))

    def _pin_buffers(self):
        for d in list(self.cpu):
            if self.stopping:  # (a short run: closing need not wait for the rest)
                return
            if not d.pin_buffer():
                self.report({"type": "warning", "video": None, "msg": "CUDA would not pin the decoders' shared "
                                                                       "buffers: copies to the GPU are staged (slower)"})
                return

    def close(self):
        """Stops everything within seconds, also when the main thread stops early (an error)."""
        self.stopping = True
        if self.pinner.is_alive():
            self.pinner.join()  # (a buffer is unpinned when its decoder stops)
        self._wake()
        self.thread.join(timeout=10)
        for s in self.sessions:
            s.inbox.put(None)
        deadline = time.monotonic() + 20
        for s in self.sessions:
            if s.is_alive():
                s.join(timeout=max(0.1, deadline - time.monotonic()))
        self.returns.put(None)
        self.returner.join(timeout=10)
        for d in self.cpu + ([self.prober] if self.prober else []) + self.retired:
            d.stop(kill=d in self.retired)

    def nvdec_use(self) -> dict:
        """For the worker's summary: its NVDEC sessions, their seconds with a job, the probes."""
        spent = {what: sum(s.spent[what] for s in self.all_sessions) for what in SPENT}
        return {"sessions": self.plan.nvdec_sessions, "busy_s": sum(s.busy_s for s in self.all_sessions), "spent": spent,
                "idle_s": dict(self.nvdec_idle), **self.probes}

    def pss_bytes(self) -> int:
        """Memory of the decoder processes (their share of the buffers they map included)."""
        return sum(d.pss_bytes() or 0 for d in self.cpu + ([self.prober] if self.prober else []))

    # ----------------------------------------------------------------- NVDEC sessions' side

    def put(self, event):
        if event[0] == "frames":
            with self.held_lock:
                self.frames_queued += len(event[2])
        self.queue.put(event)

    def get(self):
        """The main thread's next event."""
        event = self.queue.get()
        if event[0] == "frames":
            with self.held_lock:
                self.frames_queued -= len(event[2])
        return event

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

    def delivered(self, job, frames: int, by: str):
        job.frames_done += frames
        if job.root is not None:
            job.root.frames_done += frames
        self.frames_by_decoder[by] += frames

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

    # ----------------------------------------------------------------- the serving thread

    def _wake(self):
        try:
            self.wake_send.send_bytes(b"w")
        except OSError:
            pass

    def _start_decoder(self, index: int) -> CpuDecoder:
        """A decoder process; the prober (index -1) writes no frames: a small buffer, never pinned."""
        if index < 0:
            return CpuDecoder(index, "pyav", PROBER_BUFFER_BYTES, False)
        decoder = CpuDecoder(index, self.plan.reader, self.plan.buffer_bytes, self.cuda)
        if self.cuda and self.pinner.ident is not None:  # one started later, in place of one that died
            decoder.pin_buffer()
        return decoder

    def _give_back_loop(self):
        while True:
            item = self.returns.get()
            if item is None:
                return
            copied, decoder, offset = item
            if copied is not None:
                copied.synchronize()
            decoder.give_back(offset)
            self._wake()

    def _serve_loop(self):
        try:
            self._serve()
        except BaseException as e:  # the main thread reports it
            self.queue.put(("fatal", None, f"frame source: {type(e).__name__}: {e} ({where(e)})"))

    def _serve(self):
        last_vouch = 0.0
        while not self.stopping:
            decoders = self.cpu + ([self.prober] if self.prober else [])
            ready = wait([d.conn for d in decoders] + [self.wake_recv], timeout=0.5)
            for d in decoders:
                if d.conn in ready:
                    self._read(d)
            if self.wake_recv in ready:
                while self.wake_recv.poll():
                    self.wake_recv.recv_bytes()
            if self.stopping:
                return
            self._dispatch()
            now = time.monotonic()
            if now - last_vouch > 2.0:
                last_vouch = now
                self._watch(now)
            if self._finished():
                self.queue.put(("exit", None))
                return

    def _finished(self) -> bool:
        with self.session_lock:
            idle_sessions = len(self.free_sessions) == len(self.sessions)
            backlog = bool(self.backlog)
        return (self.exhausted and idle_sessions and not backlog and not self.probing
                and all(d.job is None for d in self.cpu))

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

    def _dispatch(self):
        self._segments_to_nvdec()
        self._feed_cpu_decoders()
        self._feed_nvdec_sessions()

    def _feed_cpu_decoders(self):
        """Idle decoder processes take the backlog first, then new claims."""
        for d in self.cpu:
            if d.job is not None:
                continue
            with self.session_lock:
                job = self.backlog.pop(0) if self.backlog else None
            if job is None and self.plan.cpu_claims:
                job = self._claim()
            if job is None:
                break
            busy = sum(x.job is not None for x in self.cpu) + 1
            threads = self.plan.cpu_threads or max(1, min(4, self.plan.cpu_budget // busy))
            d.job, d.last_moved, job.t_decode = job, time.monotonic(), time.perf_counter()
            self.jobs[job.vid] = job
            if job.info is not None:  # opened already: a segment, or the rest of a video NVDEC did not finish
                used(job.video, "pyav")
                d.send(("segment", job.vid, str(job.path), job.needed, threads, self.plan.chunk_frames, job.fault,
                        job.start, job.info.num_frames))
                continue
            job.decoder = d.reader
            d.send(("video", job.vid, str(job.path), self.clip_len, self.stride, threads, self.plan.chunk_frames,
                    job.fault, job.segment_frames))

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

    def _read(self, d: CpuDecoder):
        while True:
            try:
                if not d.conn.poll():
                    return
                msg = d.conn.recv()
            except (EOFError, OSError):
                self._died(d)
                return
            d.last_moved = time.monotonic()
            kind, job = msg[0], self.jobs.get(msg[1])
            if job is None:
                continue
            if kind == "open":
                job.decoder_note = msg[3]
                self._opened(job, msg[2])
            elif kind == "split":
                d.job = None
                self.jobs.pop(job.vid, None)
                self._opened(job, msg[2], msg[3])
            elif kind == "chunk":
                indices = msg[3]
                d.held += 1
                self.delivered(job, len(indices), "cpu")
                self.put(("frames", job, indices, HostChunk(self, d, msg[2], len(indices), job.info, msg[4])))
            elif kind == "note":
                video = job.root or job
                video.decoder_note = "; ".join(filter(None, [video.decoder_note, msg[2]]))
            elif kind == "done":
                (job.root or job).decode_s += time.perf_counter() - job.t_decode
                self._end(d, job, ("decoded", job))
            elif kind == "fail":
                if job.root is not None:  # the video fails: its segments not started yet need not run
                    self._drop_parts(job.root)
                self._end(d, job, ("fail", job, msg[2]))
            elif kind == "probed":
                self._probed(job, *msg[2:])

    def _opened(self, job, info: VideoInfo, index: Optional[FrameIndex] = None):
        job.info = info
        job.starts = clip_starts(info.num_frames, self.clip_len, self.stride)
        job.needed = needed_frames(job.starts, self.clip_len, info.num_frames)
        self.hold(len(job.starts))
        if index is not None:
            self._split(job, index)
        self.queue.put(("open", job))

    def hold(self, clips: int):
        with self.held_lock:
            self.clips_held += clips

    def _split(self, job, index: FrameIndex):
        """Makes the video's segments (job.parts) and puts them first in the backlog, in
        order, for the CPU decoder processes and, where NVDEC can decode the video, its
        sessions."""
        why_not_nvdec = nvdec_cannot(job.info) if self.sessions else ""  # (info has the index's open-GOP finding)
        nvdec = bool(self.sessions) and not why_not_nvdec
        job.index = index
        for first, end in segment_clips(job.starts, self.clip_len, job.segment_frames, index.frame_at(index.keyframes)):
            part = self.new_job(job.path)
            part.root, part.first_clip, part.info, part.fault = job, first, job.info, job.fault
            part.vid, self.next_vid = self.next_vid, self.next_vid + 1
            part.starts = job.starts[first:end]
            part.needed = needed_frames(part.starts, self.clip_len, job.info.num_frames)
            part.start = index.start_of(int(part.needed[0]), int(part.needed[-1]))
            part.for_nvdec = nvdec
            job.parts.append(part)
        job.decoder = ""  # its segments' decoders say who read it
        job.decoder_note = f"{len(job.parts)} segments" + (f"; not for NVDEC: {why_not_nvdec}" if why_not_nvdec else "")
        with self.session_lock:
            self.backlog[0:0] = job.parts

    def _drop_parts(self, video):
        """Takes the video's segments that no decoder has started off the backlog."""
        with self.session_lock:
            self.backlog = [j for j in self.backlog if (j.root or j) is not video]

    def _end(self, d: CpuDecoder, job, event):
        d.job = None
        self.failures_in_a_row = 0
        self.jobs.pop(job.vid, None)
        if job in self.starting:  # it ended (a broken file): no reason to wait for its frames
            self.starting.remove(job)
        self.queue.put(event)

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

    def _died(self, d: CpuDecoder):
        """A decoder process ended: the video it held (or was probing) goes back to the
        supervisor, which tries it once more or records it; a fresh process takes its place."""
        why = d.hung_reason or d.exit_reason()
        held = [d.job] if d is not self.prober else list(self.probing)
        if d is self.prober:
            self.probing.clear()
        for job in filter(None, held):
            self.jobs.pop(job.vid, None)
            video = job.root or job
            if video.abandoned:  # another of its segments' decoders died first
                continue
            video.abandoned = True
            self._drop_parts(video)
            self.report({"type": "decoder_died", "video": video.name, "why": why})
            self.queue.put(("abandon", video))
        self.exhausted = False  # the supervisor may give those videos back
        self.retired.append(d)
        self.failures_in_a_row += 1
        if self.failures_in_a_row > 3 * max(1, len(self.cpu)):
            raise RuntimeError(f"decoder processes keep dying ({why})")
        fresh = self._start_decoder(d.index)
        if d is self.prober:
            self.prober = fresh
        else:
            self.cpu[self.cpu.index(d)] = fresh

    def _watch(self, now: float):
        """Every 2 s: kills a decoder process that has had buffer space and made no progress
        for the timeout (a hung decoder); for the others, tells the supervisor (whose own
        watchdog would kill the whole worker) and the progress bar that decoding moves."""
        for d in self.cpu + ([self.prober] if self.prober else []):
            if d.job is None:
                continue
            if d.held == 0 and now - d.last_moved > self.timeout:
                d.hung_reason = f"killed: decoding {d.job.name} made no progress for {self.timeout:.0f}s"
                d.process.kill()
                continue
            for job in ([d.job] if d is not self.prober else self.probing):
                video = job.root or job
                self.report({"type": "progress", "video": video.name, "frames": video.frames_done,
                             "total": len(video.needed) if video.needed is not None else 0})


def used(video, decoder: str):
    """Adds a decoder to those that read the video (its `decoder`: "nvdec+pyav" for both)."""
    video.decoder = "+".join(sorted(set(filter(None, video.decoder.split("+"))) | {decoder}))
