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
from .gpu import nvdec_cannot
from .job import DecodeJob, used
from .nvdec_routing import NvdecRouting
from .pacing import ClaimPacing
from .plan import DecodePlan
from .processes import CpuDecoder, HostChunk

PROBER_BUFFER_BYTES = 1 << 20


class FrameSource(ClaimPacing, NvdecRouting):
    """The CPU decoder processes are this class's; claiming and pacing (decode.pacing) and
    the NVDEC sessions' side with the prober (decode.nvdec_routing) are its two mixins'."""

    def __init__(self, plan: DecodePlan, clip_len: int, stride: int, decode_timeout_s: float,
                 claim: Callable, report: Callable, new_job: Callable[..., DecodeJob], device: torch.device, maker=None):
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
        self.next_vid = 0
        self.frames_by_decoder = {"cpu": 0, "nvdec": 0}  # frames delivered, for the worker's summary
        self._init_pacing()
        self.retired: list[CpuDecoder] = []  # dead decoders whose buffers chunks may still use
        self.failures_in_a_row = 0
        self.wake_recv, self.wake_send = Pipe(duplex=False)
        # A thread pins the decoders' buffers while the model loads and compiles
        # (cudaHostRegister drops the GIL), off the start-up's critical path.
        self.pinner = threading.Thread(target=self._pin_buffers, daemon=True, name="pin")
        self.cpu = [self._start_decoder(i) for i in range(plan.cpu_decoders)]
        if self.cuda:
            self.pinner.start()
        self._init_nvdec(maker)
        self.returns: queue.Queue = queue.Queue()
        self.returner = threading.Thread(target=self._give_back_loop, daemon=True, name="give-back")
        self.returner.start()
        self.thread = threading.Thread(target=self._serve_loop, daemon=True, name="frame-source")
        self.thread.start()

    # ----------------------------------------------------------------- the main thread's side

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

    def pss_bytes(self) -> int:
        """Memory of the decoder processes (their share of the buffers they map included)."""
        return sum(d.pss_bytes() or 0 for d in self.cpu + ([self.prober] if self.prober else []))

    # ----------------------------------------------------------------- the decoders' side

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

    def delivered(self, job, frames: int, by: str):
        job.frames_done += frames
        if job.root is not None:
            job.root.frames_done += frames
        self.frames_by_decoder[by] += frames

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
                self.put(("frames", job, indices, HostChunk(self.give_back_after, d, msg[2], len(indices), job.info, msg[4])))
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

