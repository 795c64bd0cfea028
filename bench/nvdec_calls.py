"""PyNvVideoCodec call by call (bench/run.py --stages nvdec_calls, on a GPU). Every call of
an NVDEC session runs in the worker process, beside the thread that feeds the GPU: a call
that holds the GIL stops that thread for as long. Measured:
- each call of a decoder session (create, decode a batch, seek, reconfigure for another
  file, destroy; SimpleDecoder and ThreadedDecoder): its wall time and how long it held the
  GIL (a pure-Python thread counts while the call runs in another; its gaps are the time
  the call held the GIL), with the GPU idle and with 0.3 s of matrix products queued first;
- whether ThreadedDecoder's frames equal SimpleDecoder's (checksums);
- what NVDEC costs the CPU per frame, decoding whole files with the pipeline's per-frame
  DLPack exchange, in one session and in 14 at once.
Run by hand: python3 bench/nvdec_calls.py A_720P B_720P C_480P [FILES for 14 sessions]."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def run_nvdec_calls(work: Path, source: Path, say) -> dict:
    """Builds fourteen 720p files and one 480p file of 300 frames from `source`, then measures
    in a child process (PyAV's FFmpeg must not be loaded beside PyNvVideoCodec's)."""
    out = work / "nvdec_calls"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; import corpus; "
            "out, source = Path(sys.argv[2]), Path(sys.argv[3]); "
            "print(' '.join(map(str, corpus.from_video(out, 'hacs', 14, 300, source) + "
            "corpus.from_video(out, 'charades', 1, 300, source))))")
    res = subprocess.run([sys.executable, "-c", code, str(BENCH), str(out), str(source)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        say(f"  nvdec_calls: building the files FAILED: {res.stderr[-2000:]}")
        return {"error": res.stderr[-2000:]}
    paths = res.stdout.split()
    hd, small = paths[:-1], paths[-1]
    res = subprocess.run([sys.executable, __file__, hd[0], hd[1], small, *hd], capture_output=True, text=True)
    # (PyNvVideoCodec warns on stdout for every frame asked for past the end of a file)
    lines = [line for line in res.stdout.splitlines() if line.strip() and "INVALID INDEX" not in line]
    for line in lines[:-1]:
        say(line)
    if res.returncode != 0 or not lines:
        say(f"  nvdec_calls FAILED: {res.stderr[-2000:]}")
        return {"error": res.stderr[-2000:]}
    return json.loads(lines[-1])


# What follows runs in the child process (`__main__` at the end), whose globals it uses: torch,
# PyNvVideoCodec (nvc), the device, PyTorch's CUDA context (ctx), the streams and the files.


def gpu_busy(ms=300):
    with torch.cuda.stream(busy_stream):
        for _ in range(int(ms / 1.3)):
            m @ m


class Ticker:
    """The calling thread's view of the GIL: a pure-Python loop in another thread, whose
    gaps are the times it could not run."""

    def __init__(self):
        self.gaps, self.stop = [], False
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        last = time.perf_counter()
        while not self.stop:
            now = time.perf_counter()
            if now - last > 0.002:
                self.gaps.append((last, now))
            last = now

    def blocked(self, t0, t1):
        tot, mx = 0.0, 0.0
        for g0, g1 in self.gaps:
            o = min(g1, t1) - max(g0, t0)
            if o > 0:
                tot += o
                mx = max(mx, g1 - g0)
        return tot, mx


def timed(log, name, fn):
    t0 = time.perf_counter()
    r = fn()
    log.append((name, t0, time.perf_counter()))
    return r


def call_probe():
    ticker = Ticker()
    ticker.thread.start()
    log = []
    time.sleep(0.05)
    kw = dict(gpu_id=0, cuda_context=ctx, cuda_stream=stream.cuda_stream, use_device_memory=True,
              output_color_type=nvc.OutputColorType.NATIVE)
    for busy in (False, True):
        tag = " [GPU busy]" if busy else ""
        if busy:
            gpu_busy()
        d = timed(log, "SimpleDecoder(720p)" + tag, lambda: nvc.SimpleDecoder(a, **kw))
        for i in range(3):
            if busy:
                gpu_busy(100)
            timed(log, f"get_batch_frames(32) #{i}" + tag, lambda: d.get_batch_frames(32))
        timed(log, "seek_to_index(0)+1 frame" + tag, lambda: (d.seek_to_index(0), d.get_batch_frames(1)))
        timed(log, "seek_to_index(600)" + tag, lambda: d.seek_to_index(600))
        timed(log, "get_batch_frames(32) after seek" + tag, lambda: d.get_batch_frames(32))
        if busy:
            gpu_busy()
        timed(log, "reconfigure(720p other file)" + tag, lambda: d.reconfigure_decoder(b))
        timed(log, "get_batch_frames(32) after reconf" + tag, lambda: d.get_batch_frames(32))
        if busy:
            gpu_busy()
        timed(log, "reconfigure(480p)" + tag, lambda: d.reconfigure_decoder(small))
        timed(log, "get_batch_frames(32) 480p" + tag, lambda: d.get_batch_frames(32))
        timed(log, "reconfigure(720p back)" + tag, lambda: d.reconfigure_decoder(a))
        if busy:
            gpu_busy()
        timed(log, "del SimpleDecoder" + tag, lambda: d.__dict__.clear())
        if busy:
            gpu_busy()
        t = timed(log, "ThreadedDecoder(720p, 64)" + tag, lambda: nvc.ThreadedDecoder(a, 64, **kw))
        time.sleep(0.3)
        for i in range(3):
            timed(log, f"Threaded get_batch_frames(32) #{i}" + tag, lambda: t.get_batch_frames(32))
        if busy:
            gpu_busy()
        timed(log, "Threaded reconfigure(other, start 300)" + tag, lambda: t.reconfigure_decoder(b, 300))
        timed(log, "Threaded get_batch_frames(32) after" + tag, lambda: t.get_batch_frames(32))
        timed(log, "Threaded end()" + tag, lambda: t.end())
        timed(log, "del ThreadedDecoder" + tag, lambda: t.__dict__.clear())
        torch.cuda.synchronize()
    ticker.stop = True
    ticker.thread.join()
    rows = []
    for name, t0, t1 in log:
        tot, mx = ticker.blocked(t0, t1)
        rows.append({"call": name, "ms": round(1e3 * (t1 - t0), 1), "gil_ms": round(1e3 * tot, 1)})
        print(f"  {name:45s} {1e3 * (t1 - t0):8.1f} ms, GIL held {1e3 * tot:8.1f} ms (longest {1e3 * mx:6.1f})",
              flush=True)
    return rows


def frame_sums(frames):
    x = torch.stack([torch.from_dlpack(f) for f in frames])
    return x.view(x.shape[0], -1).float().sum(1).cpu().numpy()


def equal_probe():
    """ThreadedDecoder's frames against SimpleDecoder's (checksums), to see that its buffers
    are not reused under us."""
    kw = dict(gpu_id=0, cuda_context=ctx, cuda_stream=stream.cuda_stream, use_device_memory=True,
              output_color_type=nvc.OutputColorType.NATIVE)
    s = nvc.SimpleDecoder(a, **kw)
    ref = []
    with torch.cuda.stream(stream):
        while True:
            fr = s.get_batch_frames(32)
            if not fr:
                break
            ref.append(frame_sums(fr))
    t = nvc.ThreadedDecoder(a, 64, **kw)
    got, held = [], []
    with torch.cuda.stream(stream):
        while True:
            fr = t.get_batch_frames(32)
            if not fr:
                break
            held.append(fr)  # keep two batches alive before reading them
            if len(held) == 3:
                got.append(frame_sums(held.pop(0)))
                time.sleep(0.02)
        for fr in held:
            got.append(frame_sums(fr))
    ref, got = np.concatenate(ref), np.concatenate(got) if got else np.zeros(0)
    n = min(len(ref), len(got))
    differ = int((ref[:n] != got[:n]).sum())
    print(f"  ThreadedDecoder against SimpleDecoder: {len(got)} and {len(ref)} frames, checksums differ on {differ}",
          flush=True)
    t.end()
    return {"threaded_frames": len(got), "simple_frames": len(ref), "checksums_differ": differ}


def throughput(kind, n_threads, files):
    kw = dict(gpu_id=0, cuda_context=ctx, use_device_memory=True, output_color_type=nvc.OutputColorType.NATIVE)
    counts = [0] * n_threads
    barrier = threading.Barrier(n_threads + 1)

    def work(i):
        torch.cuda.set_device(dev)
        st = torch.cuda.Stream(dev)
        path = files[i % len(files)]
        d = nvc.SimpleDecoder(path, cuda_stream=st.cuda_stream, **kw) if kind == "simple" else \
            nvc.ThreadedDecoder(path, 64, cuda_stream=st.cuda_stream, **kw)
        barrier.wait()
        with torch.cuda.stream(st):
            while True:
                fr = d.get_batch_frames(32)
                if not fr:
                    break
                x = torch.stack([torch.from_dlpack(f) for f in fr])
                [f.getPTS() for f in fr]
                ev = torch.cuda.Event()
                ev.record(st)
                ev.synchronize()
                counts[i] += x.shape[0]
        if kind != "simple":
            d.end()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n_threads)]
    for t in threads:
        t.start()
    barrier.wait()
    ticker = Ticker()
    c0, t0 = os.times(), time.perf_counter()
    ticker.thread.start()
    for t in threads:
        t.join()
    wall, c1 = time.perf_counter() - t0, os.times()
    ticker.stop = True
    ticker.thread.join()
    held, _ = ticker.blocked(t0, t0 + wall)
    frames = sum(counts)
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    print(f"  {kind:8s} x{n_threads:2d}: {frames} frames in {wall:.2f}s = {frames / wall:7.0f} frames/s | process CPU "
          f"{cpu:.1f}s = {1e6 * cpu / max(1, frames):.0f} us/frame ({cpu / wall:.1f} cores) | ticker blocked "
          f"{100 * held / wall:.0f}% of the time", flush=True)
    return {"decoder": kind, "sessions": n_threads, "frames_per_s": round(frames / wall), "cpu_us_per_frame":
            round(1e6 * cpu / max(1, frames)), "gil_held_share": round(held / wall, 3)}


if __name__ == "__main__":
    import torch

    import PyNvVideoCodec as nvc

    sys.path.insert(0, str(ROOT))
    from extractor.decode.nvdec import current_context_handle

    sys.setswitchinterval(0.0005)
    a, b, small = sys.argv[1:4]
    files = sys.argv[4:] or [a, b]
    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    ctx = current_context_handle(dev)
    stream, busy_stream = torch.cuda.Stream(dev), torch.cuda.Stream(dev)
    m = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    print("  calls (GIL held: the time a pure-Python thread beside the call could not run):", flush=True)
    result = {"calls": call_probe(), "threaded_vs_simple": equal_probe(),
              "decoding": [throughput(kind, n, files) for kind in ("simple", "threaded") for n in (1, 14)]}
    print(json.dumps(result))
