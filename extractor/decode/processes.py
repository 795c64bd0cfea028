"""The worker's side of its decoder processes (decode.cpu_process): starting one with its
shared buffer (pinned for the GPU when there is one), talking to it, and reading the
chunks it writes."""

from __future__ import annotations

import mmap
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable, Optional

import torch

from .common import VideoInfo, exit_description, packed_frame_bytes

ROOT = Path(__file__).resolve().parents[2]


def shared_buffer(nbytes: int, name: str) -> int:
    """A file descriptor of nbytes of memory that a child can map: an anonymous memfd on
    Linux, an unlinked temporary file elsewhere (nothing to clean up if anyone dies)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create(name)
    else:
        fd, path = tempfile.mkstemp(prefix=name)
        os.unlink(path)
    os.ftruncate(fd, nbytes)
    return fd


def pin(tensor: torch.Tensor) -> bool:
    """Registers host memory with CUDA (page-locked, for every context: flag Portable), so
    that copies to the GPU run asynchronously straight from it. False if CUDA refused
    (copies then still work, staged by the driver)."""
    cudart = torch.cuda.cudart()
    return int(cudart.cudaHostRegister(tensor.data_ptr(), tensor.numel(), 1)) == 0


class CpuDecoder:
    """One decoder process, its socket and its buffer, seen from the worker."""

    def __init__(self, index: int, reader: str, buffer_bytes: int, cuda: bool):
        self.index, self.reader = index, reader
        fd = shared_buffer(buffer_bytes, f"feat_extraction_decoder{index}")
        mine, theirs = socket.socketpair()
        try:
            # The prober (index -1) keeps its priority: NVDEC sessions wait for its answers.
            cmd = [sys.executable, "-m", "extractor.decode.cpu_process", str(theirs.fileno()), str(fd),
                   str(buffer_bytes), reader, str(os.getpid()), "0" if index < 0 else "5"]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
            self.process = subprocess.Popen(cmd, pass_fds=(theirs.fileno(), fd), env=env, stdin=subprocess.DEVNULL)
            self.mapping = mmap.mmap(fd, buffer_bytes)
        finally:
            theirs.close()
            os.close(fd)
        self.conn = Connection(mine.detach())
        self.host = torch.frombuffer(self.mapping, dtype=torch.uint8)
        self.pinned = False  # pin_buffer: until then copies to the GPU work, staged by the driver
        self.send_lock = threading.Lock()
        self.job = None  # the VideoJob it decodes (or probes), None when idle
        self.last_moved = time.monotonic()  # when it last sent something or got space back
        self.held = 0  # chunks of its buffer that the worker has not given back yet
        self.hung_reason: Optional[str] = None  # set when the watchdog kills it

    def pin_buffer(self) -> bool:
        """Pins the shared buffer for the GPU (FrameSource does it on a thread beside the
        worker's start-up, not in its way)."""
        self.pinned = self.pinned or pin(self.host)
        return self.pinned

    def send(self, msg) -> bool:
        try:
            with self.send_lock:
                self.conn.send(msg)
            return True
        except OSError:  # it died: the reader notices the closed socket
            return False

    def give_back(self, offset: int):
        self.held -= 1
        self.last_moved = time.monotonic()
        self.send(("free", offset))

    def stop(self, kill: bool = False):
        if kill:
            self.process.kill()
        else:
            self.send(("stop",))
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.conn.close()
        if self.pinned:
            torch.cuda.cudart().cudaHostUnregister(self.host.data_ptr())
            self.pinned = False

    def exit_reason(self) -> str:
        """Why it ended, once its socket has closed (it is reaped here)."""
        try:
            return exit_description(self.process.wait(timeout=5))
        except subprocess.TimeoutExpired:
            return "its socket closed"

    def pss_bytes(self) -> Optional[int]:
        return process_pss_bytes(self.process.pid)


def process_pss_bytes(pid) -> Optional[int]:
    """Proportional set size (shared pages split between their users) from Linux's
    smaps_rollup; None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class HostChunk:
    """Frames a decoder process wrote into its shared buffer, as the worker's main thread
    receives them (FrameSource's "frames" events). `give_back_after(copied, decoder, offset)`
    hands the buffer space back once the copy out of it is done (FrameSource.give_back_after)."""

    def __init__(self, give_back_after: Callable, decoder: CpuDecoder, offset: int, count: int, info: VideoInfo,
                 colour):
        self.give_back_after, self.decoder, self.offset, self.count, self.info, self.colour = \
            give_back_after, decoder, offset, count, info, colour

    def to_input(self, maker) -> torch.Tensor:
        nbytes = self.count * packed_frame_bytes(*self.info.coded_size, self.colour)
        host = self.decoder.host[self.offset:self.offset + nbytes]
        x, copied = maker.from_host(host, self.count, self.info, self.colour)
        self.give_back_after(copied, self.decoder, self.offset)
        return x

    def discard(self):
        self.give_back_after(None, self.decoder, self.offset)
