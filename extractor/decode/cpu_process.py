"""A decoder process: decodes the videos its worker gives it, one at a time, and writes the
frames clips need into a buffer shared with the worker (pinned there, so the GPU copies
them straight out of it). Started by decode.processes as

    python -m extractor.decode.cpu_process SOCKET_FD MEMFD BUFFER_BYTES READER PARENT_PID NICE

(six arguments: NICE is 0 for the prober, which NVDEC sessions wait on, 5 for the others).

It never imports torch (a decoder costs tens of MB, not a CUDA runtime). Messages, both
ways over the socket, are tuples:
  worker -> here: ("video", vid, path, clip_len, stride, threads, chunk_frames, fault, split),
                  ("segment", vid, path, indices, threads, chunk_frames, fault, start, num_frames),
                  ("probe", vid, path, split), ("free", offset), ("stop",)
  here -> worker: ("open", vid, VideoInfo, note), ("split", vid, VideoInfo, FrameIndex),
                  ("chunk", vid, offset, indices, colour), ("note", vid, text), ("done", vid),
                  ("fail", vid, reason), ("probed", vid, VideoInfo or None, reason, FrameIndex or None)
A video of at least 2 x `split` frames (0: never) whose packets number its frames exactly
is not decoded but answered with "split": the worker hands its segments out as "segment"s
(the frames `indices`, reached from a keyframe with `start`, FrameIndex.start_of).
A chunk is len(indices) packed frames at `offset`: per frame the Y, U, V planes, to be
converted to RGB with `colour` (decode.color), or H x W x 3 RGB bytes when colour is None. The worker gives regions back in the order it got them."""

from __future__ import annotations

import mmap
import os
import signal
import sys
import threading
from collections import deque
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from ..clips import clip_starts, needed_frames
from .common import DecodeError, first_line, packed_frame_bytes
from .readers import READERS, PyAVReader, frame_index, scan_packets


class Stopped(Exception):
    """The worker asked this process to stop while it waited for buffer space."""


class Ring:
    """Regions of the shared buffer, handed out in order and given back in the same order."""

    def __init__(self, size: int):
        self.size = size
        self.out: deque = deque()  # (offset, nbytes), oldest first

    def place(self, nbytes: int):
        """Offset of a free region of nbytes, or None while the buffer is too full."""
        if not self.out:
            return 0
        tail = self.out[0][0]
        newest_offset, newest_bytes = self.out[-1]
        head = newest_offset + newest_bytes
        if newest_offset >= tail:  # outstanding regions lie in [tail, head)
            if head + nbytes <= self.size:
                return head
            return 0 if nbytes <= tail else None
        return head if head + nbytes <= tail else None  # wrapped: free space is [head, tail)

    def take(self, offset: int, nbytes: int):
        self.out.append((offset, nbytes))

    def give_back(self, offset: int):
        oldest = self.out.popleft()
        if oldest[0] != offset:
            raise RuntimeError(f"buffer region {offset} given back out of order (expected {oldest[0]})")


class DecoderProcess:
    def __init__(self, conn: Connection, buffer: np.ndarray, reader: str):
        self.conn, self.buffer, self.reader = conn, buffer, reader
        self.ring = Ring(len(buffer))

    def serve(self):
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                return
            try:
                if msg[0] == "stop":
                    return
                if msg[0] == "free":
                    self.ring.give_back(msg[1])
                elif msg[0] == "probe":
                    self.probe(*msg[1:])
                elif msg[0] == "video":
                    self.decode(*msg[1:])
                elif msg[0] == "segment":
                    self.decode_segment(*msg[1:])
            except Stopped:
                return

    def probe(self, vid, path, split=0):
        try:
            reader = READERS["pyav"](Path(path), 1, True)
        except DecodeError as e:
            self.conn.send(("probed", vid, None, str(e), None))
            return
        except Exception as e:  # a reader bug must not end the process
            self.conn.send(("probed", vid, None, f"{type(e).__name__}: {first_line(e)}", None))
            return
        reader.close()
        scan = scan_packets(Path(path))  # (probed videos are for NVDEC, which must not get open GOPs)
        reader.info.leading_pictures = scan.leading_pictures
        reader.info.variable_rate, reader.info.container = scan.variable_rate, scan.container
        index, why = splittable(path, reader.info, split, scan)
        self.conn.send(("probed", vid, reader.info, why, index))

    def wait_for_space(self, nbytes: int) -> int:
        while True:
            offset = self.ring.place(nbytes)
            if offset is not None:
                self.ring.take(offset, nbytes)
                return offset
            msg = self.conn.recv()
            if msg[0] == "free":
                self.ring.give_back(msg[1])
            elif msg[0] == "stop":
                raise Stopped

    def send_chunk(self, vid, offset: int, got: list, colour):
        self.conn.send(("chunk", vid, offset, np.asarray(got, dtype=np.int64), colour))

    def decode(self, vid, path, clip_len, stride, threads, chunk_frames, fault, split=0):
        def frames(reader):
            info = reader.info
            index, note = splittable(path, info, split)
            if index is not None:
                self.conn.send(("split", vid, info, index))
                return None
            self.conn.send(("open", vid, info, note))
            injected_fault(fault)
            return reader.frames(needed_frames(clip_starts(info.num_frames, clip_len, stride), clip_len,
                                               info.num_frames))

        self.deliver(vid, path, threads, chunk_frames, frames)

    def decode_segment(self, vid, path, indices, threads, chunk_frames, fault, start, num_frames):
        def frames(reader):
            injected_fault(fault)
            return reader.frames(indices, start)

        # segments are PyAV's (the worker splits videos only for it: DecodePlan.split_frames)
        self.deliver(vid, path, threads, chunk_frames, frames,
                     lambda: PyAVReader(Path(path), threads, True, num_frames))

    def deliver(self, vid, path, threads, chunk_frames, frames_of, open_reader=None):
        """Opens the video (with open_reader, else this process's reader), and writes the
        frames `frames_of(reader)` yields into the buffer, a chunk at a time ("chunk"
        messages), then "done"; "fail" with the reason when it cannot. frames_of may return
        None: nothing to decode (the video was split)."""
        reader, pending = None, None
        try:
            reader = open_reader() if open_reader else READERS[self.reader](Path(path), threads, True)
            info = reader.info
            largest = packed_frame_bytes(*info.coded_size, None)  # an RGB frame
            if largest > len(self.buffer):
                raise DecodeError(f"a {info.width}x{info.height} frame ({largest / 2**20:.0f} MiB in RGB) does not "
                                  f"fit the decoder's {len(self.buffer) / 2**20:.0f} MiB buffer (--decode_buffer_mb)")
            frames = frames_of(reader)
            if frames is None:
                return
            # Frames travel in chunks of one kind: packed YUV with one colour conversion, or
            # RGB; a frame of another kind (a stream may change) starts a new chunk.
            chunk, kind, got, offset = 0, None, [], 0
            for i, planes, colour in frames:
                if got and colour != kind:
                    self.send_chunk(vid, offset, got, kind)
                    got, pending = [], None
                if not got:
                    kind = colour
                    size = packed_frame_bytes(*info.coded_size, colour)
                    chunk = max(1, min(chunk_frames, len(self.buffer) // 3 // size))
                    offset = pending = self.wait_for_space(chunk * size)
                at = offset + len(got) * size
                for plane in planes:
                    self.buffer[at:at + plane.size].reshape(plane.shape)[...] = plane
                    at += plane.size
                got.append(i)
                if len(got) == chunk:
                    self.send_chunk(vid, offset, got, kind)
                    got, pending = [], None
            if got:
                self.send_chunk(vid, offset, got, kind)
                pending = None
            if getattr(reader, "fell_back", ""):
                self.conn.send(("note", vid, reader.fell_back))
            self.conn.send(("done", vid))
        except DecodeError as e:
            self.conn.send(("fail", vid, str(e)))
        except Stopped:
            raise
        except Exception as e:  # a reader bug must not end the process
            self.conn.send(("fail", vid, f"{type(e).__name__}: {first_line(e)}"))
        finally:
            if pending is not None:  # a region taken for a chunk that was never sent
                self.ring.out.pop()
            if reader is not None:
                reader.close()


def splittable(path, info, split: int, scan=None):
    """(FrameIndex, '') for a video to decode in segments: at least 2 x `split` frames and
    packets that number its frames exactly; else (None, why not: '' for a short video).
    `scan`: its packets, read already (readers.scan_packets)."""
    if not split or info.num_frames < 2 * split:
        return None, ""
    index, why = frame_index(Path(path), info.num_frames, scan)
    if index is not None:
        info.leading_pictures = index.leading_pictures
    return index, (f"not split into segments: {why}" if index is None else "")


def injected_fault(fault):
    """Test hook (see launch/worker.py: injected_fault): a decoder that hangs or crashes on a video."""
    if fault == "hang":
        threading.Event().wait()
    elif fault == "crash":
        os.kill(os.getpid(), signal.SIGKILL)


def die_with(parent_pid: int):
    """Linux: SIGKILL when the worker dies, so that no decoder outlives it."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the worker died before prctl
        os._exit(0)


def main(argv):
    fd, memfd, size, reader, parent = int(argv[1]), int(argv[2]), int(argv[3]), argv[4], int(argv[5])
    die_with(parent)
    import faulthandler

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1: where it is stuck
    try:
        os.nice(int(argv[6]))  # decoders below the worker's own threads, which feed the GPU
    except OSError:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the worker's to handle
    buffer = np.frombuffer(mmap.mmap(memfd, size), dtype=np.uint8)
    DecoderProcess(Connection(fd), buffer, reader).serve()


if __name__ == "__main__":
    main(sys.argv)
