"""Worker processes, the shared work queue, progress and the run's summary.

Videos are claimed one at a time, longest (largest file) first, through a counter in a
torch.distributed TCPStore (the c10d key-value store): no GPU idles on a fixed stripe
while another still has a queue of long videos."""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.multiprocessing as mp

from .pipeline import RunConfig, run_worker


@dataclass
class RunSummary:
    done: int = 0
    skipped: int = 0
    failed: dict = field(default_factory=dict)  # name -> reason
    clips: int = 0
    video_s: float = 0.0  # duration of the videos done (frames / fps)
    wall_s: float = 0.0
    startup_s: float = 0.0  # until the first worker had its model loaded (and compiled)
    peak_rss_gib: float = 0.0  # largest peak resident memory of a worker process
    peak_gpu_gib: float = 0.0  # largest peak GPU memory allocated by a worker
    decode_s: float = 0.0
    model_s: float = 0.0
    save_s: float = 0.0
    backbone: Optional[str] = None


def order_longest_first(videos: list[Path]) -> list[Path]:
    def size(p: Path) -> int:
        try:
            return p.stat().st_size
        except OSError:
            return 0

    return sorted(videos, key=lambda p: (-size(p), p.name))


class Progress:
    """Receives every worker's events; one tqdm bar, one line per video, the summary."""

    def __init__(self, total: int, summary: RunSummary, on_video=None):
        from tqdm import tqdm

        self.summary = summary
        self.on_video = on_video  # called with each "done" / "failed" event (the manifest)
        self.bar = tqdm(total=total, unit="video", dynamic_ncols=True, disable=None)
        self.t0 = time.perf_counter()
        self.t_ready: Optional[float] = None
        self.held: dict[int, set] = {}  # rank -> videos claimed and not finished
        self.lock = threading.Lock()

    def say(self, text: str, err: bool = False):
        self.bar.write(text, file=sys.stderr if err else sys.stdout)

    def handle(self, rank: int, ev: dict):
        with self.lock:
            self._handle(rank, ev)

    def _handle(self, rank: int, ev: dict):
        kind, s = ev["type"], self.summary
        name = ev.get("video")
        if kind == "claimed":
            self.held.setdefault(rank, set()).add(name)
        elif kind == "ready":
            s.backbone = ev["backbone"]
            if self.t_ready is None:
                self.t_ready = time.perf_counter()
                s.startup_s = self.t_ready - self.t0
        elif kind == "done":
            self.held.get(rank, set()).discard(name)
            s.done += 1
            s.clips += ev["clips"]
            s.video_s += ev["frames"] / ev["fps"] if ev["fps"] else 0.0
            s.decode_s += ev["decode_s"]
            s.model_s += ev["model_s"]
            s.save_s += ev["save_s"]
            self.say(f"[R{rank}] {name}: {ev['clips']} clips ({ev['frames']} frames @ {ev['fps']:.2f} fps) | "
                     f"decode ({ev['decoder']}) {ev['decode_s']:.2f}s | model {ev['model_s']:.2f}s | save {ev['save_s']:.3f}s")
            self._record(ev)
            self.bar.update(1)
            self.bar.set_postfix(clips_per_s=f"{s.clips / max(time.perf_counter() - self.t_ready, 1e-9):.1f}")
        elif kind == "failed":
            self.held.get(rank, set()).discard(name)
            s.failed[name] = ev["reason"]
            self.say(f"[R{rank}] FAILED {name}: {ev['reason']}", err=True)
            self._record(ev)
            self.bar.update(1)
        elif kind == "warning":
            where = f" {name}:" if name else ""
            self.say(f"[R{rank}] warning:{where} {ev['msg']}", err=True)
        elif kind == "peak":
            s.peak_rss_gib = max(s.peak_rss_gib, ev["rss_gib"])
            s.peak_gpu_gib = max(s.peak_gpu_gib, ev["gpu_gib"])
        elif kind == "fatal":
            self.say(f"[R{rank}] worker stopped: {ev['msg']}", err=True)

    def _record(self, ev: dict):
        if self.on_video is not None:
            try:
                self.on_video(ev)
            except OSError as e:
                self.say(f"warning: cannot write the manifest: {e}", err=True)

    def worker_lost(self, rank: int, why: str):
        with self.lock:
            for name in sorted(self.held.pop(rank, set())):
                self._handle(rank, {"type": "failed", "video": name, "reason": f"worker {rank} {why} while holding it"})

    def close(self):
        self.summary.wall_s = time.perf_counter() - self.t0
        self.bar.close()


def _device_for(cfg: RunConfig, rank: int) -> torch.device:
    return torch.device("cuda", rank % max(1, torch.cuda.device_count())) if cfg.device == "cuda" else torch.device("cpu")


def _worker_body(rank: int, cfg: RunConfig, claim, report, cpu_threads: int, backbone=None):
    torch.set_num_threads(max(1, cpu_threads))
    device = _device_for(cfg, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)

    def claim_and_tell():
        path = claim()
        if path is not None:
            report({"type": "claimed", "video": path.name})
        return path

    run_worker(cfg, device, claim_and_tell, report, backbone)


def _spawned_worker(rank: int, cfg: RunConfig, videos: list[Path], store_port: int, events, cpu_threads: int):
    from torch.distributed import TCPStore

    def report(ev: dict):
        events.put((rank, ev))

    try:
        store = TCPStore("127.0.0.1", store_port, is_master=False, use_libuv=True)

        def claim() -> Optional[Path]:
            i = store.add("next_video", 1) - 1
            return videos[i] if i < len(videos) else None

        _worker_body(rank, cfg, claim, report, cpu_threads)
    except Exception as e:
        report({"type": "fatal", "msg": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()})
        raise SystemExit(3)
    finally:
        events.put((rank, {"type": "exit"}))


def launch(cfg: RunConfig, videos: list[Path], world_size: int, summary: RunSummary, on_video=None,
           backbone=None) -> RunSummary:
    """Runs the workers over `videos`; on_video(event) is called for each video finished or
    failed. `backbone`, already opened, is reused by a worker that runs in this process."""
    videos = order_longest_first(videos)
    progress = Progress(len(videos), summary, on_video)
    cpu_threads = max(1, (os.cpu_count() or 1) // world_size)
    try:
        if world_size == 1:
            lock = threading.Lock()
            todo = iter(videos)

            def claim() -> Optional[Path]:
                with lock:
                    return next(todo, None)

            _worker_body(0, cfg, claim, lambda ev: progress.handle(0, ev), cpu_threads, backbone)
        else:
            _spawn(cfg, videos, world_size, progress, cpu_threads)
    finally:
        progress.close()
    return summary


def _spawn(cfg: RunConfig, videos: list[Path], world_size: int, progress: Progress, cpu_threads: int):
    from torch.distributed import TCPStore
    import queue as queue_mod

    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, use_libuv=True)
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    procs = [ctx.Process(target=_spawned_worker, args=(r, cfg, videos, store.port, events, cpu_threads), daemon=False)
             for r in range(world_size)]
    for p in procs:
        p.start()
    exited: set[int] = set()
    while len(exited) < world_size:
        try:
            rank, ev = events.get(timeout=1.0)
        except queue_mod.Empty:
            for r, p in enumerate(procs):
                if r not in exited and not p.is_alive():
                    exited.add(r)
                    progress.worker_lost(r, f"died (exit code {p.exitcode})")
            continue
        if ev["type"] == "exit":
            exited.add(rank)
            procs[rank].join(timeout=30)
            if procs[rank].exitcode not in (0, None):
                progress.worker_lost(rank, f"stopped (exit code {procs[rank].exitcode})")
        else:
            progress.handle(rank, ev)
    for p in procs:
        p.join(timeout=30)
    claimed = min(int(store.add("next_video", 0)), len(videos))
    for path in videos[claimed:]:
        progress.handle(-1, {"type": "failed", "video": path.name, "reason": "not processed: every worker stopped"})
