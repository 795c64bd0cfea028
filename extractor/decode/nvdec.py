"""NVDEC sessions: threads of the worker that decode videos, and segments of long videos,
on the GPU's video decoder engines through PyNvVideoCodec, in the decoder's native NV12,
and turn each batch into model input on their own CUDA stream straight from the decoder's
surfaces (same colour conversion as the CPU path: decode.color). Which videos they may
take, and how many there are, is decode.gpu's."""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Optional

import numpy as np
import torch

from .common import DecodeError, first_line, where

_CREATE_LOCK = threading.Lock()  # decoder sessions are created and destroyed one at a time


def current_context_handle(device: torch.device) -> int:
    """PyTorch's CUDA context (the device's primary context) as a CUcontext integer, read
    with the driver API, so that the decoder's surfaces live in PyTorch's context."""
    torch.cuda.set_device(device)
    torch.cuda.synchronize(device)  # makes the primary context current in this thread
    libcuda = ctypes.CDLL("libcuda.so.1")
    ctx = ctypes.c_void_p()
    if libcuda.cuCtxGetCurrent(ctypes.byref(ctx)) != 0 or not ctx.value:
        raise RuntimeError("no current CUDA context")
    return ctx.value


def _plane(t: torch.Tensor) -> torch.Tensor:
    """A decoded NV12 frame's tensor as (rows, width)."""
    return t.squeeze(-1) if t.dim() == 3 and t.shape[-1] == 1 else t


def nv12_batch(frames, stream_ptr: Optional[int] = None) -> torch.Tensor:
    """The decoder's frames as one contiguous (n, rows, width) uint8 tensor, copied on the
    current stream. Each frame's DLPack exchange orders the stream `stream_ptr` (the current
    one, as an integer) after the decoder's work; with it, the exchange is one call per frame,
    not torch.from_dlpack's, which first tries keywords PyNvVideoCodec does not take and
    catches the errors: 11% of the worker's GIL time, the largest share (py-spy, H100,
    2026-11-27). Without it, or where the frames' exchange takes no `stream`, torch.from_dlpack.
    (Views over several frames' surfaces at once, built from their addresses, failed with
    "invalid argument" on 480p videos and were no faster at 720p: H100, 2026-11-26.)"""
    views = None
    if stream_ptr is not None:
        try:
            views = [torch._C._from_dlpack(f.__dlpack__(stream=stream_ptr)) for f in frames]
        except (TypeError, AttributeError):
            pass
    return torch.stack([_plane(v) for v in views or [torch.from_dlpack(f) for f in frames]])


class DeviceChunk:
    """Frames an NVDEC session already made into model input, on its own CUDA stream."""

    def __init__(self, x: torch.Tensor, ready: torch.cuda.Event, room: threading.Semaphore):
        self.x, self.ready, self.room = x, ready, room

    def to_input(self, maker) -> torch.Tensor:
        stream = torch.cuda.current_stream(self.x.device)
        stream.wait_event(self.ready)
        self.x.record_stream(stream)
        self.room.release()
        return self.x

    def discard(self):
        self.room.release()


class OutOfStep(Exception):
    """After a seek, NVDEC's frames are not the ones the video's index says they are."""


def whole_video_batches(decoder, num_frames: int, last: int, chunk: int):
    """(frame numbers, frames) from the decoder's first frame to frame `last`, numbered in
    the order they come (the CPU path's numbering, from the start)."""
    position = 0
    while position <= last:
        try:  # never past the last frame (the decoder warns for every index beyond it)
            frames = decoder.get_batch_frames(max(1, min(chunk, num_frames - position)))
        except Exception as e:
            raise DecodeError(f"NVDEC decoding failed near frame {position} ({first_line(e)})") from None
        if not frames:
            raise DecodeError(f"stream ended before frame {last} of {num_frames}")
        yield np.arange(position, position + len(frames)), frames
        position += len(frames)


def timestamp_shift(decoder, zero_pts: int) -> int:
    """NVDEC's timestamps less the container's, for segment_batches. They can differ by a
    constant: PyNvVideoCodec 2.2.4 does not apply an MP4's edit list, so on x264 files with
    B-frames they were two frames early (H100, 2026-11-27), and frames shifted by two passed
    a check of uniformly spaced timestamps. Measured on frame 0, decoded from the start
    (frame 0 is the first frame out of a decoding from the start, the numbering of every
    path), where the index says `zero_pts`."""
    try:
        decoder.seek_to_index(0)
        return int(decoder.get_batch_frames(1)[0].getPTS()) - zero_pts
    except Exception as e:
        raise OutOfStep(f"the seek to frame 0 failed ({first_line(e)})") from None


def segment_batches(decoder, first: int, keyframe: int, pts: np.ndarray, chunk: int, shift: int):
    """(frame numbers, frames) for frames first..first + len(pts) - 1, after a seek to frame
    `keyframe` (a keyframe at or before `first`): frames shown before pts[0] are passed over,
    and every later frame must have the next timestamp of `pts` (FrameIndex.start_of), less
    NVDEC's `shift` (timestamp_shift), the same check as the CPU path's. Anything else
    raises OutOfStep, after the frames that were right."""
    try:
        decoder.seek_to_index(keyframe)
    except Exception as e:
        raise OutOfStep(f"the seek failed ({first_line(e)})") from None
    got = 0
    while got < len(pts):
        try:
            frames = decoder.get_batch_frames(min(chunk, len(pts) - got))
        except Exception as e:
            raise DecodeError(f"NVDEC decoding failed near frame {first + got} ({first_line(e)})") from None
        if not frames:
            raise OutOfStep(f"the stream ended before frame {first + got}")
        try:
            stamps = np.array([f.getPTS() for f in frames], dtype=np.int64) - shift
        except Exception as e:
            raise OutOfStep(f"no frame timestamps ({first_line(e)})") from None
        if got == 0:  # still between the keyframe and the segment
            lead = int(np.argmax(stamps >= pts[0])) if (stamps >= pts[0]).any() else len(stamps)
            frames, stamps = frames[lead:], stamps[lead:]
        m = min(len(stamps), len(pts) - got)
        wrong = np.flatnonzero(stamps[:m] != pts[got:got + m])
        right = int(wrong[0]) if wrong.size else m
        if right:
            yield first + got + np.arange(right), frames[:right]
            got += right
        if wrong.size:
            raise OutOfStep(f"frame {first + got} has timestamp {stamps[right]}, the index says {pts[got]}")


# What an NVDEC session's time on a job goes to: setting its decoder up for the file, the
# decoder's calls (demuxing and decoding, timestamps and seeks included), launching the copy
# out of its surfaces and the conversion, waiting for the GPU to run them (they queue behind
# the model's kernels), and waiting for the main thread to take chunks.
SPENT = ("opening files", "decoding", "launching conversions", "waiting for the GPU", "waiting for the main thread")


def timed(batches, spent: dict):
    """The (frame numbers, frames) of `batches`, the time each took added to spent["decoding"]."""
    while True:
        t0 = time.perf_counter()
        item = next(batches, None)
        spent["decoding"] += time.perf_counter() - t0
        if item is None:
            return
        yield item


class NvdecSession(threading.Thread):
    """One decoder session: takes jobs from `inbox` (None ends it), decodes each (a whole
    video from its first frame, or a segment from a keyframe) and puts its chunks, made
    into model input, on the source's queue. Whatever it cannot finish goes to the CPU
    decoder processes from the first frame it did not deliver (FrameSource.nvdec_stopped).

    The session keeps its PyNvVideoCodec decoder from video to video (reconfigured for the
    next file, or only seeking in the same one): destroying one holds the GIL for tens of
    milliseconds while the driver frees its surfaces, and every other thread of the worker,
    the one feeding the GPU included, waits (py-spy on the H100: a third of the GIL's time,
    2026-11-26)."""

    def __init__(self, index: int, device: torch.device, source, plan, maker):
        super().__init__(daemon=True, name=f"nvdec{index}")
        import queue

        self.device, self.source, self.plan, self.maker = device, source, plan, maker
        self.inbox: queue.Queue = queue.Queue()
        self.room = threading.Semaphore(plan.prefetch)  # chunks the main thread has not taken yet
        self.decoder, self.path = None, ""
        self.busy_s = 0.0  # seconds spent on jobs, and how (SPENT), for the worker's summary
        self.spent = dict.fromkeys(SPENT, 0.0)

    def run(self):
        try:
            torch.cuda.set_device(self.device)
            # High priority: a batch's conversion is a few small kernels that the session waits
            # for before it decodes on, and behind the model's they waited (H100, 2026-11-27).
            self.stream = torch.cuda.Stream(self.device, priority=-1)
            self.stream_ptr = self.stream.cuda_stream or 1  # (DLPack's number for the legacy default stream)
            self.context = current_context_handle(self.device)
        except Exception as e:
            self.source.session_broken(self, first_line(e))
            return
        try:
            while True:
                job = self.inbox.get()
                if job is None:
                    return
                t0 = time.perf_counter()
                try:
                    self.decode(job)
                finally:
                    self.busy_s += time.perf_counter() - t0
                    self.source.session_free(self)
        finally:
            self._drop_decoder()

    def _open(self, job, seeking: bool):
        """Sets the session's decoder up for the job's file (a decoder already on that file
        is kept for a job that begins with a seek: a segment)."""
        import PyNvVideoCodec as nvc

        path = str(job.path)
        with _CREATE_LOCK:
            if self.decoder is None:
                self.decoder = nvc.SimpleDecoder(path, gpu_id=self.device.index or 0,
                                                 cuda_context=self.context, cuda_stream=self.stream.cuda_stream,
                                                 use_device_memory=True, output_color_type=nvc.OutputColorType.NATIVE)
            elif not (seeking and path == self.path):
                self.decoder.reconfigure_decoder(path)
            self.path = path

    def _drop_decoder(self):
        """Destroys the decoder (after an error its state is not trusted; and at the end)."""
        with _CREATE_LOCK:
            self.decoder, self.path = None, ""

    def decode(self, job):
        video, info, needed, chunk, spent = job.video, job.info, job.needed, self.plan.chunk_frames, self.spent
        t0 = job.t_decode = time.perf_counter()
        try:
            self._open(job, seeking=job.root is not None)
        except Exception as e:
            self._drop_decoder()
            self.source.nvdec_stopped(job, -1, first_line(e))
            return
        finally:
            spent["opening files"] += time.perf_counter() - t0
        delivered, last_report, keep_decoder = -1, time.monotonic(), False
        try:
            if job.root is None:
                batches = whole_video_batches(self.decoder, info.num_frames, int(needed[-1]), chunk)
            else:  # a segment, checked against the video's index also when it begins in the first GOP
                first, last, pts = int(needed[0]), int(needed[-1]), video.index.pts
                keyframe = int(video.index.frame_at(job.start[0])) if job.start is not None else 0
                if video.nvdec_shift is None:  # once per video (the seek to frame 0 holds the GIL 6-37 ms)
                    t0 = time.perf_counter()
                    video.nvdec_shift = timestamp_shift(self.decoder, int(pts[0]))
                    spent["decoding"] += time.perf_counter() - t0
                batches = segment_batches(self.decoder, first, keyframe, pts[first:last + 1], chunk, video.nvdec_shift)
            for ids, frames in timed(batches, spent):
                if self.source.stopping:
                    return
                keep = np.isin(ids, needed)
                if not keep.any():
                    continue
                t0 = time.perf_counter()
                with torch.cuda.stream(self.stream), torch.inference_mode():
                    batch = nv12_batch(frames, self.stream_ptr)
                    if not keep.all():
                        batch = batch[torch.from_numpy(np.flatnonzero(keep)).to(self.device)]
                    x = self.maker.from_nv12(batch, info)
                    ready = torch.cuda.Event()
                    ready.record(self.stream)
                t1 = time.perf_counter()
                while not self.room.acquire(timeout=0.5):
                    if self.source.stopping:
                        return
                t2 = time.perf_counter()
                self.source.put(("frames", job, ids[keep], DeviceChunk(x, ready, self.room)))
                delivered = int(ids[keep][-1])
                self.source.delivered(job, int(keep.sum()), "nvdec")
                t3 = time.perf_counter()
                ready.synchronize()  # the decoder may reuse its surfaces for the next batch
                t4 = time.perf_counter()
                spent["launching conversions"] += t1 - t0 + t3 - t2
                spent["waiting for the main thread"] += t2 - t1
                spent["waiting for the GPU"] += t4 - t3
                if time.monotonic() - last_report > 2.0:
                    last_report = time.monotonic()
                    self.source.report({"type": "progress", "video": video.name, "frames": video.frames_done,
                                        "total": len(video.needed)})
            if self.source.stopping:
                return
            video.decode_s += time.perf_counter() - job.t_decode
            keep_decoder = True
            self.source.put(("decoded", job))
        except OutOfStep as e:
            keep_decoder = True  # the decoder is fine; the file's timestamps are not what NVDEC seeks by
            self.source.nvdec_stopped(job, delivered, f"NVDEC out of step with the index: {e}")
        except Exception as e:  # a decoder bug must not take the worker down
            reason = str(e) if isinstance(e, DecodeError) else f"NVDEC: {type(e).__name__}: {first_line(e)} ({where(e)})"
            self.source.nvdec_stopped(job, delivered, reason)
        finally:
            if not keep_decoder:
                self._drop_decoder()
