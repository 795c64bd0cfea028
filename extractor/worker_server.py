"""The process the workers are forked from.

A worker imports torch and the pipeline before its first video, and torch.compile's first
call imports the compiler: spawned, each worker did so itself (Python's start and that first
call were 4.7 s and 7.0 s of a 25.6 s start-up on an H100, 2026-12-05). Forked from a server
that imported them once, a worker, and a worker started again after a death, begins with
them imported. The server is multiprocessing's forkserver: a fresh interpreter (not a fork
of process 0, which may have started CUDA) that never starts CUDA itself, so that its
children can. Process 0 starts it before its own checks and imports (this module imports
no torch), so that the two import side by side.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from multiprocessing import forkserver
from pathlib import Path

# What a worker imports: torch and the pipeline (the worker's module); for a compiled run,
# the compiler (inductor's Triton code generator included: on the GPU its kernels are
# Triton's); for a Hugging Face backbone, transformers. The server skips a module it cannot
# import (no Triton, no transformers): the worker then meets the error itself.
WORKER_MODULES = ("extractor.launch.worker",)
COMPILER_MODULES = ("torch._dynamo", "torch._inductor.compile_fx", "torch._inductor.codegen.triton",
                    "torch._inductor.runtime.triton_heuristics")
TRANSFORMERS_MODULES = ("transformers",)
TRANSFORMERS_MODEL_TYPES = ("hf", "dinov3")
PROJECT_ROOT = str(Path(__file__).resolve().parents[1])


def worker_context(compile: bool, model_type: str):
    """The multiprocessing context that starts workers: the forkserver, its preloads set for
    this run; spawn where there is no forkserver (not POSIX)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(WORKER_MODULES + (COMPILER_MODULES if compile else ())
                                    + (TRANSFORMERS_MODULES if model_type in TRANSFORMERS_MODEL_TYPES else ())))
    return ctx


def gpu_present() -> bool:
    """Whether this machine has an NVIDIA GPU, without starting CUDA (a guess that only
    decides what the server imports)."""
    return Path("/dev/nvidiactl").exists()


def start_worker_server(compile: bool, model_type: str) -> None:
    """Starts the server now (it imports while this process goes on)."""
    if worker_context(compile, model_type).get_start_method() == "forkserver":
        # Started with Ctrl-C ignored, which it keeps and hands to its children: a Ctrl-C
        # mid-import would print its traceback, and process 0 stops the workers itself.
        # Python 3.11's server ignores the sys.path it is given: the project's folder reaches
        # it (and the workers) through PYTHONPATH. torch.cuda.is_available(), which an import
        # may call, starts CUDA's driver unless told to ask NVML instead.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        path = os.environ.get("PYTHONPATH")
        server_env = {"PYTHONPATH": os.pathsep.join([PROJECT_ROOT] + ([path] if path else [])),
                      "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}
        saved = {k: os.environ.get(k) for k in server_env}
        os.environ.update(server_env)
        try:
            forkserver.ensure_running()
        finally:
            signal.signal(signal.SIGINT, previous)
            for k, v in saved.items():
                if v is None:
                    del os.environ[k]
                else:
                    os.environ[k] = v


def stop_worker_server() -> None:
    """Stops the server where this process started one: a run that ends before any worker
    started (a usage error) leaves no import going on for nothing, and does not wait for it.
    (The server also stops by itself once this process has exited.)"""
    server = getattr(forkserver, "_forkserver", None)  # (multiprocessing's own; private names, guarded)
    pid = getattr(server, "_forkserver_pid", None)
    if pid is None or not hasattr(server, "_stop"):
        return
    try:
        os.kill(pid, signal.SIGKILL)  # (it may be mid-import: nothing of value is lost)
    except OSError:
        pass
    server._stop()  # (reaps it, closes its pipe and socket)
