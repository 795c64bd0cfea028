"""Scale and survive: torchrun and srun groups on the CPU, a shared queue that balances
workers, dead workers, and a run killed with SIGKILL then resumed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, claimed_videos, cli_command, cli_env, free_port, run_cli, tiny_args
from extractor.demo import write_video
from extractor.launch import RunSummary, local_group, order_longest_first, run_group
from extractor.outputs import read_manifest
from extractor.config import RunConfig


@pytest.fixture(scope="module")
def five_videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("five")
    for i, n in enumerate([40, 24, 30, 20, 50]):
        write_video(d / f"v{i}.mp4", n, width=64, height=48)
    return d


def done_names(stdout: str) -> list:
    return sorted(line.split("] ", 1)[1].split(":")[0] for line in stdout.splitlines() if " clips (" in line)


def check_every_video_once(out: Path, names: list):
    assert sorted(p.name for p in out.glob("*.npy")) == sorted(n[:-4] + ".npy" for n in names)
    manifest = read_manifest(out)
    assert sorted(manifest) == sorted(names) and all(e["status"] == "done" for e in manifest.values())
    for name in names:
        assert np.load(out / (name[:-4] + ".npy")).shape[1] == 128


def test_torchrun_two_nodes_of_two_processes(five_videos, tmp_path):
    """Two torchrun 'nodes' on localhost, two processes each: every video done exactly once."""
    port = free_port()
    out = tmp_path / "out"
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2",
         "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port),
         *cli_command(*tiny_args(five_videos, out))[1:]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(OMP_NUM_THREADS="1"), cwd=ROOT)
        for node in (0, 1)]
    logs = [p.communicate(timeout=300) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], logs
    stdout = logs[0][0] + logs[1][0]
    assert "device cpu x4 in 4 processes" in stdout
    assert done_names(stdout) == [f"v{i}.mp4" for i in range(5)]  # each once, all reported by process 0
    assert "summary: 5 done" in stdout
    check_every_video_once(out, [f"v{i}.mp4" for i in range(5)])
    # Every process joined the one group. Which of them made clips is timing: on CI's 2 cores
    # one process has claimed all five tiny videos before the others were ready.
    ready = {line.split("]")[0] for line in stdout.splitlines() if "] ready after " in line}
    assert ready == {"[R0", "[R1", "[R2", "[R3"}, stdout


def test_srun_tasks_form_a_group(five_videos, tmp_path):
    """Slurm's srun variables (no srun needed to test them): two tasks, one group. Process 0
    alone prints the whole group's progress (plain lines: stderr is not a terminal) and
    writes run.log, with every video of the group in it."""
    out = tmp_path / "out"
    base = dict(SLURM_NTASKS="2", SLURM_JOB_ID="4242", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    procs = [subprocess.Popen(cli_command(*tiny_args(five_videos, out, "--log_every_s", "1")), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              env=cli_env(OMP_NUM_THREADS="1", SLURM_PROCID=str(r), SLURM_LOCALID=str(r), **base))
             for r in (0, 1)]
    logs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert "device cpu x2 in 2 processes" in logs[0][0] and logs[1][0] == ""
    check_every_video_once(out, [f"v{i}.mp4" for i in range(5)])
    assert "progress: " in logs[0][1] and "/5 videos: " in logs[0][1] and "progress" not in logs[1][1]
    run_log = (out / "run.log").read_text()
    assert run_log.count("run started on ") == 1 and "device cpu x2 in 2 processes" in run_log
    video_lines = [line for line in logs[0][0].splitlines() if " clips (" in line]  # whichever task did them
    assert len(video_lines) == 5 and all(line in run_log for line in video_lines)
    assert "progress: " in run_log and "summary: 5 done" in run_log
    # without a rendezvous address: one line, exit 2
    env = cli_env(SLURM_NTASKS="2", SLURM_PROCID="0")
    env.pop("MASTER_ADDR", None)
    res = run_cli(*tiny_args(five_videos, tmp_path / "x"), env=env)
    assert res.returncode == 2 and "MASTER_ADDR" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_dead_or_hung_workers_are_replaced_their_videos_retried_once_then_recorded(five_videos, tmp_path):
    """A worker killed (SIGKILL) on v0 the first time: v0 is done on the retry. A worker
    killed on v3 every time, and a decoder process that hangs on v2 every time: v2 and v3
    are in failed_videos.txt with the reason. The others are done; exit 1."""
    out = tmp_path / "out"
    env = cli_env(FEAT_EXTRACTION_KILL_WORKER_ON="v0.mp4:1,v3.mp4:*,v2.mp4:*:hang", OMP_NUM_THREADS="1")
    res = run_cli(*tiny_args(five_videos, out, "--world_size", "2", "--decode_timeout_s", "3"), env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert "killed by SIGKILL" in res.stderr and "v0.mp4" in res.stderr
    failed = dict(line.split("\t") for line in (out / "failed_videos.txt").read_text().splitlines())
    assert sorted(failed) == ["v2.mp4", "v3.mp4"]
    assert "both attempts" in failed["v3.mp4"] and "SIGKILL" in failed["v3.mp4"]
    assert "both attempts" in failed["v2.mp4"] and "made no progress for 3s" in failed["v2.mp4"]
    assert done_names(res.stdout) == ["v0.mp4", "v1.mp4", "v4.mp4"]
    manifest = read_manifest(out)
    assert manifest["v3.mp4"]["status"] == "failed" and manifest["v0.mp4"]["status"] == "done"
    assert "summary: 3 done, 0 skipped, 2 failed" in res.stdout


def test_dead_decoder_processes_are_replaced_and_their_video_tried_once_more(five_videos, tmp_path):
    """A decoder process that dies (SIGKILL, as a crash in FFmpeg would) on v1 the first
    time and on v2 every time: the worker lives on with a fresh decoder; v1 is done on its
    second try, v2 is recorded as failed; every other video is done."""
    out = tmp_path / "out"
    env = cli_env(FEAT_EXTRACTION_KILL_WORKER_ON="v1.mp4:1:crash,v2.mp4:*:crash", OMP_NUM_THREADS="1")
    res = run_cli(*tiny_args(five_videos, out), env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "worker died" not in res.stderr
    assert "v1.mp4: its decoder process died (killed by SIGKILL): it is tried once more" in res.stderr
    failed = dict(line.split("\t") for line in (out / "failed_videos.txt").read_text().splitlines())
    assert failed == {"v2.mp4": "its decoder died on both attempts (last: killed by SIGKILL)"}
    assert done_names(res.stdout) == ["v0.mp4", "v1.mp4", "v3.mp4", "v4.mp4"]


def test_killed_run_resumes_without_recomputing(tmp_path):
    """SIGKILL the whole run (twice, at different moments), then run the same command: it
    completes, every file under a final name is whole, finished videos are not redone."""
    data = tmp_path / "videos"
    for i in range(6):
        write_video(data / f"clip{i}.mp4", 24 + 8 * i, width=64, height=48)
    out = tmp_path / "out"
    args = tiny_args(data, out, "--batch_clips", "2")
    kept = {}
    for wanted in (1, 3):  # kill once the wanted number of files exist
        proc = subprocess.Popen(cli_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=cli_env(), cwd=ROOT, start_new_session=True)
        deadline = time.monotonic() + 240
        while len(list(out.glob("*.npy"))) < wanted and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for f in out.glob("*.npy"):  # a file under its final name is always whole
            assert np.load(f).shape[1] == 128
            kept.setdefault(f.name, f.stat().st_mtime_ns)
    assert 1 <= len(kept) < 6
    res = run_cli(*args)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{6 - len(kept)} to do, {len(kept)} already done" in res.stdout
    for name, mtime in kept.items():
        assert (out / name).stat().st_mtime_ns == mtime  # not recomputed
    assert sorted(p.name for p in out.glob("*.npy")) == [f"clip{i}.npy" for i in range(6)]
    assert not list(out.glob(".*.tmp"))
    assert all(e["status"] == "done" for e in read_manifest(out).values())
    run_log = (out / "run.log").read_text()  # the killed runs' lines are kept, the last run's appended
    assert run_log.count("run started on ") == 3 and run_log.count("summary: ") == 1


def _simulated_worker(rank, local_rank, cfg, data_path, conn, cpu_threads, seconds_per_byte):
    """Speaks the workers' protocol; 'processing' a video sleeps in proportion to its size."""
    for name, size in claimed_videos(conn, data_path):
        time.sleep(size * seconds_per_byte)
        conn.send(("event", {"type": "done", "video": name, "clips": 1, "frames": 16, "fps": 30.0, "decoder": "sim",
                             "decode_s": 0.0, "model_s": 0.0, "save_s": 0.0}))
    conn.send(("exit",))
    conn.close()


def test_longest_first_queue_balances_workers(tmp_path):
    """Four simulated workers on the real queue, videos of 10 s to 5 min (file size
    standing for length): all of them run out of work at nearly the same time, where the
    original's fixed stripe (videos[rank::4]) leaves one working long after the others."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 300, size=24)
    data = tmp_path / "videos"
    data.mkdir()
    for i, n in enumerate(lengths):
        with open(data / f"v{i:02d}.mp4", "wb") as f:
            f.truncate(int(n) * 1000)
    workers, total_s = 4, 6.0
    seconds_per_byte = total_s / (lengths.sum() * 1000)
    summary = RunSummary()
    cfg = RunConfig(save_path=tmp_path, ckpt_path=tmp_path)
    todo = [p.name for p in order_longest_first(sorted(data.iterdir()))]
    run_group(local_group(workers), cfg, data, todo, summary, worker=_simulated_worker, thread_arg=seconds_per_byte)
    assert summary.done == 24 and not summary.failed
    spread, fraction = summary.end_idle()
    per_worker = [lengths[r::workers].sum() * 1000 * seconds_per_byte for r in range(workers)]
    striped_spread = max(per_worker) - min(per_worker)
    assert fraction < 0.05, (spread, summary.worker_end_s)
    assert spread < striped_spread / 3, (spread, striped_spread)


def _worker_that_cannot_use_cuda_when_forked(rank, local_rank, cfg, data_path, conn, cpu_threads, starts):
    """A worker whose first start (forked from a server that had started CUDA) asks to be
    spawned instead; its next start does the work."""
    starts.append(rank)
    if len(starts) == 1:
        conn.send(("spawn_me",))
        conn.close()
        return
    _simulated_worker(rank, local_rank, cfg, data_path, conn, cpu_threads, 0.0)


def test_a_worker_that_cannot_use_cuda_in_its_fork_is_started_again_spawned(tmp_path):
    from extractor.launch import Supervisor

    data = tmp_path / "videos"
    data.mkdir()
    for i in range(3):
        (data / f"v{i}.mp4").write_bytes(b"x" * 100)
    summary, starts, seen = RunSummary(), [], []
    cfg = RunConfig(save_path=tmp_path, ckpt_path=tmp_path)
    original = Supervisor.__init__

    def keep(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(self)

    Supervisor.__init__ = keep
    try:
        run_group(local_group(1), cfg, data, sorted(p.name for p in data.iterdir()), summary,
                  worker=_worker_that_cannot_use_cuda_when_forked, thread_arg=starts)
    finally:
        Supervisor.__init__ = original
    assert summary.done == 3 and not summary.failed
    assert len(starts) == 2  # not counted as a death: no "could not be restarted"
    assert seen[0].ctx.get_start_method() == "spawn"


def _children(pid: int) -> list:
    try:
        return [int(k) for task in Path(f"/proc/{pid}/task").iterdir() for k in (task / "children").read_text().split()]
    except OSError:  # (it ended meanwhile)
        return []


def _descendants(pid: int) -> list:
    kids = _children(pid)
    return kids + [d for k in kids for d in _descendants(k)]


def _worker_processes(pid: int) -> list:
    """The command's workers: the children of its workers' server (multiprocessing's forkserver)."""
    def cmdline(k):
        try:
            return Path(f"/proc/{k}/cmdline").read_bytes()
        except OSError:
            return b""

    return [w for k in _children(pid) if b"forkserver" in cmdline(k) for w in _children(k)]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_the_command_leaves_no_workers_behind(five_videos, tmp_path, how):
    """SIGTERM (as torchrun or Slurm send) ends the run like Ctrl-C, exit 130; SIGKILL of the
    command alone takes its worker processes with it (no orphans left decoding)."""
    out = tmp_path / "out"
    proc = subprocess.Popen(cli_command(*tiny_args(five_videos, out, "--world_size", "2", "--batch_clips", "2")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=ROOT)
    deadline = time.monotonic() + 120
    while len(_worker_processes(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_worker_processes(proc.pid)) == 2
    kids = _descendants(proc.pid)  # the workers, their decoder processes, the workers' server, multiprocessing's tracker
    time.sleep(2)
    proc.send_signal(how)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == (130 if how == signal.SIGTERM else -9)
    if how == signal.SIGTERM:
        assert "interrupted" in stderr and "Traceback" not in stderr
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{k}").exists() for k in kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [k for k in kids if Path(f"/proc/{k}").exists() and "Z" not in
             Path(f"/proc/{k}/stat").read_text().split(")")[-1].split()[0]]
    assert not alive


def test_event_log_never_blocks_on_an_event_not_yet_written():
    """The coordinator shares its process's store client with a publisher: reading an event
    that is numbered but not yet written must return, not wait (that wait deadlocked)."""
    from extractor.launch import EventLog

    log = EventLog(local_group(1))
    log.store.add("events", 1)  # a publisher has taken number 1 ...
    t0 = time.monotonic()
    assert log.take(1) is None and time.monotonic() - t0 < 1.0
    log.store.set("event/1", '{"type": "warning", "rank": 0}')  # ... and now written it
    assert log.take(1)["type"] == "warning"
    assert not log.store.check(["event/1"])  # read events leave the store


def test_an_event_numbered_by_a_process_that_died_does_not_hold_back_the_rest():
    """A process killed between numbering an event and writing it leaves a hole in the event
    log. The coordinator reads the events after the hole (they may be another process's:
    its workers' starts and results), ends when the run has, and stops waiting for the hole
    once it has stayed empty for --lost_after_s. (It once waited for it for ever: CI,
    2026-11-27, a run whose second process was killed right after writing a video.)"""
    from extractor.launch import EventLog
    from extractor.launch.coordinator import Coordinator

    class Seen:
        def __init__(self):
            self.events = []

        def handle(self, rank, ev):
            self.events.append((rank, ev["type"]))

        def tick(self):
            pass

    group = local_group(1)
    log = EventLog(group)
    log.store.add("events", 1)  # numbered by a process that died before writing it
    log.publish(0, {"type": "ready"})
    seen = Seen()
    coordinator = Coordinator(group, seen, [], lost_after_s=1.0)
    coordinator.start()
    deadline = time.monotonic() + 10
    while not seen.events and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen.events == [(0, "ready")]  # read while the hole before it is still open
    log.publish(0, {"type": "done"})
    group.store.add("processes_finished", 1)
    coordinator.join(timeout=10)
    assert not coordinator.is_alive() and coordinator.error is None
    assert seen.events == [(0, "ready"), (0, "done")]


def test_every_video_gets_a_result_when_a_process_is_lost():
    """Process 1 claims two videos and is lost having said so for one only (killed between
    the claim and its event): both are recorded failed, as held by a lost process (so that
    features it wrote are kept: keep_written_before_loss), and the video nobody claimed as
    not processed. None is left without a result."""
    from extractor.launch import EventLog, Group
    from extractor.launch.coordinator import Coordinator
    from extractor.progress import LOST_WHILE_HOLDING, Progress, RunLog

    store = local_group(1).store
    group = Group(store, process=0, processes=2, ranks=[0], local_ranks=[0], world_size=2)
    other = EventLog(Group(store, process=1, processes=2, ranks=[1], local_ranks=[0], world_size=2))
    store.add("claimed", 2)
    other.publish(1, {"type": "claimed", "video": "a.mp4", "attempt": 1})
    summary = RunSummary()
    progress = Progress({"a.mp4": 10, "b.mp4": 10, "c.mp4": 10}, summary, RunLog(None), 16, 16)
    coordinator = Coordinator(group, progress, ["a.mp4", "b.mp4", "c.mp4"], lost_after_s=1.0)
    coordinator.start()
    store.add("processes_finished", 1)  # process 0's own share is finished
    coordinator.join(timeout=20)
    assert not coordinator.is_alive() and coordinator.error is None
    assert sorted(summary.failed) == ["a.mp4", "b.mp4", "c.mp4"]
    assert summary.failed["a.mp4"].endswith(LOST_WHILE_HOLDING) and summary.failed["b.mp4"].endswith(LOST_WHILE_HOLDING)
    assert summary.failed["c.mp4"].startswith("not processed")


def test_process_0_says_who_has_not_joined_and_gives_up_in_time():
    """Process 0 waits for every process to join, saying which have not; past the timeout it
    raises one clear error and tells those that joined, rather than waiting silently for half
    an hour (torch's env:// rendezvous did: a srun task killed at start-up hung the run)."""
    import threading

    from extractor.launch import GroupError, join_launcher_group, read_todo

    before = dict(os.environ)
    port = free_port()

    def env(rank):
        return {"rank": rank, "world_size": 3, "local_rank": rank, "master_addr": "127.0.0.1", "master_port": port,
                "node_workers": 1}

    said, seen_by_1 = [], []

    def process_1():
        group = join_launcher_group(env(1), timeout_s=30)
        try:
            read_todo(group)
        except GroupError as e:
            seen_by_1.append(str(e))

    t0 = time.monotonic()
    joiner = threading.Thread(target=process_1, daemon=True)
    joiner.start()
    with pytest.raises(GroupError, match=r"process\(es\) 2 of 3 did not join within 3s"):
        join_launcher_group(env(0), timeout_s=3, say=said.append, report_every_s=1)
    assert time.monotonic() - t0 < 15
    joiner.join(timeout=10)
    assert seen_by_1 and seen_by_1[0].startswith("process 0 gave up: process(es) 2 of 3 did not join")
    assert said and said[-1].startswith("waiting for process(es) 2 of 3 to join")  # 1 joined by then
    assert dict(os.environ) == before  # what the CLI's later subprocesses inherit


@pytest.mark.parametrize("process", [0, 1])
def test_a_group_still_forming_stops_on_sigterm(five_videos, tmp_path, process):
    """One task of two started: process 0 waits for the other to join, process 1 for process
    0's store. SIGTERM (scancel) stops either at once with one line, exit status 130 (both
    waits ran in C++, deaf to signals, for half an hour)."""
    import socket

    port = free_port()
    env = cli_env(SLURM_NTASKS="2", SLURM_JOB_ID="4245", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                  SLURM_PROCID=str(process), SLURM_LOCALID="0", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cli_command(*tiny_args(five_videos, tmp_path / "out")), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)

    def waiting() -> bool:
        if process == 0:  # its store is up: it waits for process 1
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        caught = next(line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                      if line.startswith("SigCgt:"))
        return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))  # its SIGTERM handler is in place

    try:
        deadline = time.monotonic() + 120
        while not waiting() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()  # a process deaf to SIGTERM is not left behind
    assert proc.returncode == 130 and stderr.strip() == "interrupted: nothing was done", stderr


def two_tasks_until_a_video_is_written(args: list) -> list:
    """Two srun-style tasks of the CLI with `args`, returned once the first feature file
    appears in --save_path (or after two minutes)."""
    out = Path(args[args.index("--save_path") + 1])
    base = dict(SLURM_NTASKS="2", SLURM_JOB_ID="4243", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
                OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(cli_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              env=cli_env(SLURM_PROCID=str(r), SLURM_LOCALID=str(r), **base)) for r in (0, 1)]
    deadline = time.monotonic() + 120
    while not list(out.glob("*.npy")) and time.monotonic() < deadline:
        time.sleep(0.05)
    return procs


def test_a_process_whose_process_0_stops_says_so_in_one_line(five_videos, tmp_path):
    """Process 0 (it hosts the group's store) killed mid-run: the other process stops its
    workers and says so in one line, exit status 3, no traceback or C++ stack."""
    procs = two_tasks_until_a_video_is_written(tiny_args(five_videos, tmp_path / "out", "--batch_clips", "2"))
    procs[0].kill()
    procs[0].communicate()
    _, stderr = procs[1].communicate(timeout=60)
    assert procs[1].returncode == 3, stderr
    assert stderr.strip().splitlines() == [line for line in stderr.strip().splitlines() if line.startswith("error: ")]
    assert "lost its group" in stderr and "run the same command again" in stderr


def test_a_lost_process_does_not_stop_the_run(five_videos, tmp_path):
    """Two srun-style tasks; task 1 is killed (SIGKILL, as when its node dies) while it
    works. Process 0 notices the missing heartbeats, records what task 1 held as failed,
    finishes the rest and ends; the same command run again completes the set."""
    out = tmp_path / "out"
    args = tiny_args(five_videos, out, "--batch_clips", "2", "--lost_after_s", "4")
    procs = two_tasks_until_a_video_is_written(args)
    procs[1].kill()
    stdout, stderr = procs[0].communicate(timeout=120)
    procs[1].communicate()
    assert procs[0].returncode in (0, 1), stderr
    assert "process 1 sent no heartbeat" in stderr and "Traceback" not in stderr
    failed_file = out / "failed_videos.txt"
    failed = [line.split("\t")[0] for line in failed_file.read_text().splitlines()] if failed_file.exists() else []
    done = [p.stem + ".mp4" for p in out.glob("*.npy")]
    assert sorted(done + failed) == [f"v{i}.mp4" for i in range(5)]
    res = run_cli(*args)
    assert res.returncode == 0 and f"{len(failed)} to do" in res.stdout
    check_every_video_once(out, [f"v{i}.mp4" for i in range(5)])
