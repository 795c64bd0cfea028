"""Running feat_extraction.py for the benchmark: in its own process group, its output in
a log, a time limit after which every process prints its threads' stacks (SIGUSR1) and is
killed, optional py-spy samples of the worker, and the summary line parsed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"summary: (\d+) done, \d+ skipped, (\d+) failed \| (\d+) clips in ([\d.]+)s after ([\d.]+)s "
                     r"start-up = ([\d.]+) clips/s \(then ([\d.]+)s shutdown\).*?peak memory per worker: ([\d.]+) GiB RAM.*?([\d.]+) GiB GPU"
                     r"(?:.*?first worker out of work waited ([\d.]+)s \(([\d.]+)% of the run\))?")
HEADER = re.compile(r"decoder \w+: per worker ([^|]*)\|")
WORKER = re.compile(r"\[R(\d+)\] worker: (\d+) clips in ([\d.]+)s from its first batch = ([\d.]+) clips/s \| waited for "
                    r"frames ([\d.]+)s(?:.*?frames decoded: NVDEC ([\d,]+), CPU ([\d,]+))?")


def worker_lines(text: str) -> list[dict]:
    """Each worker's own line: its rank, clips, rate from its first batch, time it waited for
    frames, and the frames NVDEC and the CPU decoders gave it (NVDEC 0 when none)."""
    out = []
    for m in WORKER.finditer(text):
        rank, clips, work_s, rate, waited, nvdec, cpu = m.groups()
        line = text[m.start():text.find("\n", m.start())]
        spent = re.search(r"main thread: converting ([\d.]+)s, clips ([\d.]+)s, launching ([\d.]+)s, collecting "
                          r"([\d.]+)s", line)
        out.append({"rank": int(rank), "clips": int(clips), "work_s": float(work_s), "clips_per_s": float(rate),
                    "waited_s": float(waited), "nvdec_frames": int((nvdec or "0").replace(",", "")),
                    "cpu_frames": int(cpu.replace(",", "")) if cpu else None,
                    "main_thread_s": dict(zip(("converting", "clips", "launching", "collecting"),
                                              map(float, spent.groups()))) if spent else None})
    return sorted(out, key=lambda w: w["rank"])


def profile(proc: subprocess.Popen, log: Path, seconds: float):
    """py-spy (where installed) samples every worker process at once, 5 s after the first is
    ready: for `seconds` every thread, idle or not (.pyspy.txt beside the log; `--native` gave
    no output on the H100 machine, 2026-11-26), then for `seconds` only the thread holding the
    GIL (.gil.txt), collapsed stacks; each thread's share of a core (.cpu.txt); meanwhile
    `nvidia-smi dmon`, each GPU's utilisation, clocks and power every second (.dmon.txt).
    With several workers, each file is named by its worker's GPU (.gpu1.pyspy.txt)."""
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
    gpus = worker_gpus(workers)
    dmon = None
    if shutil.which("nvidia-smi"):
        with open(log.with_suffix(".dmon.txt"), "w") as fh:
            dmon = subprocess.Popen(["nvidia-smi", "dmon", "-s", "puc", "-d", "1", "-c", str(int(2 * seconds))],
                                    stdout=fh, stderr=subprocess.STDOUT)
    threads = [threading.Thread(target=_sample_worker, args=(spy, pid, log, seconds,
                                                             (f".gpu{gpus[pid]}" if pid in gpus else f".pid{pid}")
                                                             if len(workers) > 1 else ""))
               for pid in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if dmon is not None:
        try:
            dmon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            dmon.kill()


def _sample_worker(spy: str, pid: str, log: Path, seconds: float, tag: str):
    out = log.with_suffix(f"{tag}.pyspy.txt")
    before, t0, machine0 = thread_cpu(pid), time.monotonic(), machine_cpu()
    for mode, suffix in ((["--idle"], ".pyspy.txt"), (["--gil"], ".gil.txt")):
        subprocess.run([spy, "record", "--pid", pid, "--duration", str(int(seconds)), "--rate", "200", *mode,
                        "--threads", "--nonblocking", "--format", "raw", "--output",
                        str(log.with_suffix(tag + suffix))], capture_output=True, text=True)
    after, wall, machine1 = thread_cpu(pid), time.monotonic() - t0, machine_cpu()
    busy = {tid: (after[tid] - before.get(tid, 0)) / wall for tid in after}
    names = python_thread_names(out)
    used = (machine1[0] - machine0[0]) / max(1e-9, machine1[1] - machine0[1])
    log.with_suffix(f"{tag}.cpu.txt").write_text(
        f"worker pid {pid}: machine {used:.1%} of {os.cpu_count()} cores busy\n" + "".join(
            f"{share:6.1%} {tid} {names.get(tid, '')}\n" for tid, share in sorted(busy.items(), key=lambda kv: -kv[1])))


def worker_gpus(pids: list) -> dict:
    """Process id -> index of the GPU it computes on: from nvidia-smi, else (a container whose
    process ids nvidia-smi does not see) from the one /dev/nvidiaN the process has open."""
    def q(what: str) -> list[str]:
        return subprocess.run(["nvidia-smi", f"--query-{what}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20).stdout.splitlines()

    out = {}
    try:
        index = {uuid.strip(): i.strip() for i, uuid in (line.split(",") for line in q("gpu=index,uuid"))}
        out = {pid.strip(): index.get(uuid.strip(), "?") for pid, uuid in
               (line.split(",")[:2] for line in q("compute-apps=pid,gpu_uuid"))}
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    for pid in pids:
        if pid not in out:
            try:
                nodes = {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
            except OSError:
                continue
            numbered = [n for n in nodes if re.fullmatch(r"/dev/nvidia\d+", n)]
            if len(numbered) == 1:
                out[pid] = numbered[0].removeprefix("/dev/nvidia")
    return out


def thread_cpu(pid: str) -> dict:
    """CPU seconds so far of each thread of a process, by thread id."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[task.name] = (int(fields[11]) + int(fields[12])) / tick
    return out


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine so far (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def python_thread_names(pyspy_raw: Path) -> dict:
    """Thread id -> Python thread name, from py-spy's raw output ('thread (TID): NAME;...')."""
    names = {}
    if pyspy_raw.exists():
        for line in pyspy_raw.read_text(errors="replace").splitlines():
            m = re.match(r"thread \((\w+)\): ([^;]+)", line)
            if m:
                names[m.group(1)] = m.group(2).strip()
    return names


def run_cli(data: Path, out: Path, ckpt: Path, kind: str, extra: list, quick: bool, log: Path,
            timeout: float = 1200, profile_s: float = 0, env: Optional[dict] = None, cores: Optional[set] = None) -> dict:
    """feat_extraction.py in its own process group, its output in `log`. Past `timeout`, every
    process of the run prints its threads' stacks (SIGUSR1) into the log, then is killed.
    `cores`: the CPU cores the run may use (its affinity, which the workers plan from)."""
    args = [ROOT / "feat_extraction.py", "--data_set", kind, "--data_path", data, "--save_path", out,
            "--ckpt_path", ckpt, "--model_name", "auto", "--overwrite", *extra]
    if quick:
        args += ["--device", "cpu", "--batch_clips", "4"]
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, *map(str, args)], stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, **(env or {})},
                                preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
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
        return {"error": f"exit {proc.returncode} (log {log}): {text[-3000:]}", "exit_code": proc.returncode}
    done, failed, clips, busy, startup, rate, shutdown, ram, gpu, idle_s, idle_pct = m.groups()
    header = HEADER.search(text)
    alone = re.search(r"model alone ([\d.]+) clips/s", text)
    whole = re.search(r"ready after [\d.]+s, ([\d.]+)s after the command started", text)
    decoders = {}
    for line in text.splitlines():
        hit = re.search(r"decode \(([\w+]+)\)", line)
        if hit:
            decoders[hit.group(1)] = decoders.get(hit.group(1), 0) + 1
    return {"command": "python " + " ".join(map(str, args)), "exit_code": proc.returncode, "videos": int(done),
            "failed": int(failed),
            "clips": int(clips), "busy_s": float(busy), "startup_s": float(startup), "clips_per_s": float(rate),
            "shutdown_s": float(shutdown),
            "peak_ram_gib": float(ram), "peak_gpu_gib": float(gpu), "videos_by_decoder": decoders,
            "nvdec_stopped": text.count("NVDEC stopped"),  # warned once per video
            "end_idle_s": float(idle_s or 0), "end_idle_pct": float(idle_pct or 0), "wall_s": round(wall, 2),
            "decoding": header.group(1).strip() if header else "", "summary": m.group(0),
            "workers": worker_lines(text), "model_alone_clips_per_s": float(alone.group(1)) if alone else None,
            "startup_from_command_s": float(whole.group(1)) if whole else None}


