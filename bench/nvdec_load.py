"""NVDEC's decoding rate beside GPU work: is NVDEC slower beside the model because of the
GPU, and what gives it back its rate?

NVDEC sessions (threads, as in the pipeline: PyNvVideoCodec SimpleDecoder, native NV12 in
device memory, one high-priority stream each, the frames stacked out of the surfaces)
decode the corpus for a few seconds with the GPU idle, and while another thread keeps
matrix products queued: on a side stream, on the legacy default stream, or confined to N
SMs by a green context (what the worker does: decode.gpu.leave_sms_to_nvdec). Runs in a
child process: PyAV's FFmpeg must not load beside PyNvVideoCodec's.

  python bench/run.py WORK --stages nvdec_load --corpora hacs"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = "14:idle,14:side,14:green128,14:green120,14:green112"


def run_nvdec_load(videos: list[Path], say, runs: str = RUNS, seconds: float = 6.0) -> dict:
    """runs: SESSIONS:LOAD, comma-separated; LOAD idle, side (matrix products on a side
    stream), default (on the default stream) or greenN (on N SMs)."""
    res = subprocess.run([sys.executable, __file__, runs, str(seconds), *map(str, videos)],
                         capture_output=True, text=True)
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    if res.returncode != 0 or not lines:
        say(f"  nvdec_load FAILED: {res.stderr[-2000:]}")
        return {"error": res.stderr[-2000:]}
    out = json.loads(lines[-1])
    for name, r in out.items():
        say(f"  NVDEC, {name:42s}: {r['frames_per_s']:7.0f} frames/s | get_batch_frames "
            f"median {r['call_ms_median']:.1f} ms, 90th percentile {r['call_ms_p90']:.1f} ms | GPU work beside: "
            f"{r['load_tflops']:.0f} TFLOP/s{' (' + r['error'] + ')' if 'error' in r else ''}")
    return out


def measure(videos, sessions, seconds, load_stream):
    import numpy as np
    import PyNvVideoCodec as nvc
    import torch

    sys.path.insert(0, str(ROOT))
    from extractor.decode.gpu import green_stream
    from extractor.decode.nvdec import current_context_handle, nv12_batch

    dev = torch.device("cuda", 0)
    ctx = current_context_handle(dev)
    stop, counts, calls, lock = threading.Event(), [0] * sessions, [], threading.Lock()
    work = {"flop": 0.0}

    def session(i):
        torch.cuda.set_device(dev)
        stream = torch.cuda.Stream(dev, priority=-1)
        decoder, k = None, i
        while not stop.is_set():
            path = str(videos[k % len(videos)])
            k += sessions
            if decoder is None:
                decoder = nvc.SimpleDecoder(path, gpu_id=0, cuda_context=ctx, cuda_stream=stream.cuda_stream,
                                            use_device_memory=True, output_color_type=nvc.OutputColorType.NATIVE)
            else:
                decoder.reconfigure_decoder(path)
            while not stop.is_set():
                t0 = time.perf_counter()
                frames = decoder.get_batch_frames(32)
                dt = time.perf_counter() - t0
                if not frames:
                    break
                with torch.cuda.stream(stream):
                    nv12_batch(frames, stream.cuda_stream)  # the sessions' exchange
                    done = torch.cuda.Event()
                    done.record(stream)
                done.synchronize()
                counts[i] += len(frames)
                with lock:
                    calls.append(dt)

    def load():
        torch.cuda.set_device(dev)
        if load_stream.startswith("green"):
            try:
                green, stream = green_stream(dev, int(load_stream[5:]))
            except Exception as e:
                work["error"] = f"{type(e).__name__}: {e}"
                return
        else:
            stream = torch.cuda.default_stream(dev) if load_stream == "default" else torch.cuda.Stream(dev)
        m = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        marks = []
        with torch.cuda.stream(stream):
            while not stop.is_set():
                for _ in range(20):
                    m @ m
                work["flop"] += 20 * 2 * 8192 ** 3
                e = torch.cuda.Event()
                e.record(stream)
                marks.append(e)
                if len(marks) > 3:  # about as much queued as the worker's QUEUED_BATCHES
                    marks.pop(0).synchronize()
        torch.cuda.synchronize(dev)

    threads = [threading.Thread(target=session, args=(i,), daemon=True) for i in range(sessions)]
    if load_stream != "idle":
        threads.append(threading.Thread(target=load, daemon=True))
    for t in threads:
        t.start()
    time.sleep(2.0)  # decoders set up
    c0, n0, f0, t0 = sum(counts), len(calls), work["flop"], time.perf_counter()
    time.sleep(seconds)
    c1, n1, f1, t1 = sum(counts), len(calls), work["flop"], time.perf_counter()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    ms = np.array(calls[n0:n1]) * 1e3
    return {"frames_per_s": round((c1 - c0) / (t1 - t0), 1), **({"error": work["error"]} if "error" in work else {}),
            "call_ms_median": round(float(np.median(ms)), 2) if ms.size else 0.0,
            "call_ms_p90": round(float(np.percentile(ms, 90)), 2) if ms.size else 0.0,
            "load_tflops": round((f1 - f0) / (t1 - t0) / 1e12, 1)}


if __name__ == "__main__":
    runs, secs, files = sys.argv[1], float(sys.argv[2]), [Path(p) for p in sys.argv[3:]]
    said = {"idle": "GPU idle", "side": "matmuls on a side stream", "default": "matmuls on the default stream",
            **{f"green{n}": f"matmuls on {n} SMs (green context)" for n in (96, 104, 112, 120, 128)}}
    result = {}
    for i, run in enumerate(runs.split(",")):
        n, load = run.split(":")
        name = f"{n} sessions, {said[load]}" + (" (again)" if run in runs.split(",")[:i] else "")
        result[name] = measure(files, int(n), secs, load)
        print(name, result[name], flush=True)
    print(json.dumps(result), flush=True)
