"""Running feat_extraction.py for the benchmark: in its own process group, its output in
a log, a time limit after which every process prints its threads' stacks (SIGUSR1) and is
killed, optional py-spy samples of the worker, and the summary line parsed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"summary: (\d+) done, \d+ skipped, (\d+) failed \| (\d+) clips in ([\d.]+)s after ([\d.]+)s "
                     r"start-up = ([\d.]+) clips/s.*?peak memory per worker: ([\d.]+) GiB RAM.*?([\d.]+) GiB GPU"
                     r"(?:.*?first worker out of work waited ([\d.]+)s \(([\d.]+)% of the run\))?")
HEADER = re.compile(r"decoder \w+: per worker ([^|]*)\|")


def profile(proc: subprocess.Popen, log: Path, seconds: float):
    """py-spy (where installed) samples the worker process for `seconds`, 5 s after it is
    ready; collapsed stacks, idle ones included, go beside the log."""
    import shutil

    spy = shutil.which("py-spy")
    deadline = time.monotonic() + 600
    while spy and proc.poll() is None and time.monotonic() < deadline:
        if "decoding:" in log.read_text(errors="replace"):
            break
        time.sleep(0.5)
    else:
        return
    time.sleep(5)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    workers = [pid for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]
    for pid in workers[:1]:
        subprocess.run([spy, "record", "--pid", pid, "--duration", str(int(seconds)), "--rate", "200", "--idle",
                        "--threads", "--nonblocking", "--format", "raw", "--output",
                        str(log.with_suffix(".pyspy.txt"))], capture_output=True, text=True)


def run_cli(data: Path, out: Path, ckpt: Path, kind: str, extra: list, quick: bool, log: Path,
            timeout: float = 1200, profile_s: float = 0) -> dict:
    """feat_extraction.py in its own process group, its output in `log`. Past `timeout`, every
    process of the run prints its threads' stacks (SIGUSR1) into the log, then is killed."""
    args = [ROOT / "feat_extraction.py", "--data_set", kind, "--data_path", data, "--save_path", out,
            "--ckpt_path", ckpt, "--model_name", "auto", "--overwrite", *extra]
    if quick:
        args += ["--device", "cpu", "--batch_clips", "4"]
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, *map(str, args)], stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        if profile_s:
            profile(proc, log, profile_s)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGUSR1)
            time.sleep(3)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    wall = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    m = SUMMARY.search(text)
    if m is None:
        return {"error": f"exit {proc.returncode} (log {log}): {text[-3000:]}"}
    done, failed, clips, busy, startup, rate, ram, gpu, idle_s, idle_pct = m.groups()
    header = HEADER.search(text)
    decoders = {}
    for line in text.splitlines():
        hit = re.search(r"decode \((\w+)\)", line)
        if hit:
            decoders[hit.group(1)] = decoders.get(hit.group(1), 0) + 1
    return {"command": "python " + " ".join(map(str, args)), "videos": int(done), "failed": int(failed),
            "clips": int(clips), "busy_s": float(busy), "startup_s": float(startup), "clips_per_s": float(rate),
            "peak_ram_gib": float(ram), "peak_gpu_gib": float(gpu), "videos_by_decoder": decoders,
            "end_idle_s": float(idle_s or 0), "end_idle_pct": float(idle_pct or 0), "wall_s": round(wall, 2),
            "decoding": header.group(1).strip() if header else "", "summary": m.group(0)}


