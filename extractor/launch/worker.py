"""A worker: a child process on one GPU that claims videos from its supervisor and runs
the pipeline on them; and the machine it runs on (its cores, its one visible GPU)."""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Optional

import torch

from ..config import RunConfig
from ..pipeline import run_worker


def cores_available() -> int:
    """CPU cores this process may run on (its affinity: a Slurm or container limit)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def injected_fault(name: str, attempt: int, ready: Optional[threading.Event] = None) -> Optional[str]:
    """Test hook: FEAT_EXTRACTION_KILL_WORKER_ON='a.mp4:1,b.mp4:*,c.mp4:*:hang,d.mp4:1:crash'
    kills the worker that takes a.mp4 on its first attempt and b.mp4 on every attempt
    (SIGKILL, as the OOM killer would, once `ready` is set: a worker claims a video while its
    model loads, and one that dies before it is ready is not restarted), and returns the
    fault for the decoder process that takes the video to inject: c.mp4's hangs every time,
    d.mp4's dies (SIGKILL) the first time."""
    spec = os.environ.get("FEAT_EXTRACTION_KILL_WORKER_ON")
    for item in spec.split(",") if spec else []:
        video, when, action = (item.split(":") + ["kill"])[:3]
        if video == name and (when == "*" or when == str(attempt)):
            if action == "kill":
                if ready is not None:
                    ready.wait(timeout=120)
                os.kill(os.getpid(), signal.SIGKILL)
            return action
    return None


def dump_stacks_on_sigusr1() -> None:
    """`kill -USR1 PID` prints every thread's stack to stderr: where a stuck run waits."""
    import faulthandler

    faulthandler.register(signal.SIGUSR1, all_threads=True)


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its supervisor dies (no orphans left decoding)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def forked_after_cuda() -> bool:
    """Whether this process was forked from one in which CUDA had started (torch then refuses
    CUDA here): a workers' server that some import started CUDA in."""
    return getattr(torch.cuda, "_is_in_bad_fork", lambda: False)()


def one_visible_gpu(local_rank: int) -> bool:
    """Makes the worker's GPU (its local rank's, among those CUDA_VISIBLE_DEVICES lists or all)
    the only one CUDA shows this process, as cuda:0; called before CUDA starts here. Every
    worker then compiles the same code for the same device, so that the compile cache one
    worker wrote serves the others (compiled for cuda:1, a second GPU's worker missed the
    cache a run on cuda:0 had written). False, and nothing changed, where the GPUs cannot be
    counted without starting CUDA."""
    from ..decode.gpu import gpu_count_from_nvml

    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        names = [name.strip() for name in listed.split(",") if name.strip()]
    else:
        names = [str(i) for i in range(gpu_count_from_nvml())]
    if not names:
        return False
    os.environ["CUDA_VISIBLE_DEVICES"] = names[local_rank % len(names)]
    return True


def process_start_time() -> Optional[float]:
    """When this process started (wall clock, from Linux's /proc: its start in clock ticks
    since boot against the uptime, both to 10 ms), or None."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def worker_main(rank: int, local_rank: int, cfg: RunConfig, data_path: Path, conn, cpu_threads: int):
    """A worker, in a child process: claims videos from its supervisor over `conn` and runs
    the pipeline on them."""
    t_main = time.time()
    _die_with_parent()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is process 0's: it stops the workers
    dump_stacks_on_sigusr1()
    send_lock, claim_lock, ready = threading.Lock(), threading.Lock(), threading.Event()

    def send(msg):
        with send_lock:
            conn.send(msg)

    def report(ev: dict):
        send(("event", ev))
        if ev.get("type") == "ready":
            ready.set()

    def claim() -> Optional[tuple[Path, Optional[str], Optional[float]]]:
        """The next video, the decoder fault to inject into it (tests only), and the videos
        left in the queue per worker of the run (None: not known, for a video tried again)."""
        with claim_lock:
            send(("claim",))
            reply = conn.recv()
        if reply is None:
            return None
        name, attempt, left = reply
        return data_path / name, injected_fault(name, attempt, ready), left

    try:
        if cfg.device == "cuda" and forked_after_cuda():
            send(("spawn_me",))
            return
        torch.set_num_threads(max(1, cpu_threads))
        if cfg.device == "cuda":
            device = torch.device("cuda", 0 if one_visible_gpu(local_rank) else
                                  local_rank % max(1, torch.cuda.device_count()))
        else:
            device = torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
            torch.cuda.init()
        started = process_start_time()
        startup = {"python": t_main - started} if started is not None and started <= t_main else {}
        startup["cuda"] = time.time() - t_main
        run_worker(cfg, device, claim, report, cpu_budget=cpu_threads, startup=startup)
        send(("exit",))
    except Exception as e:
        where = traceback.extract_tb(e.__traceback__)[-1]
        try:
            send(("event", {"type": "fatal", "msg": f"{type(e).__name__}: {e} (at {Path(where.filename).name}:"
                                                     f"{where.lineno})", "trace": traceback.format_exc()}))
        except OSError:
            pass
        raise SystemExit(3)
    finally:
        conn.close()
