"""Running the workers: one group of processes, one shared queue, one record of the run.

A run is a group of processes that share torch.distributed's key-value store (the c10d
store). Started as `python feat_extraction.py`, the group is this one process, which runs
--world_size workers; started by torchrun or Slurm's srun, it is one process per worker,
spread over nodes. Either way the same code runs:

- process 0 publishes the names of the videos to do, longest (largest file) first;
- every process supervises its workers: a worker is a child process on one GPU that asks
  its supervisor for videos, and the supervisor claims them from a counter in the store, so
  no GPU idles on a fixed stripe while another still has long videos. A worker that dies
  (decoder crash, killed) is replaced; the videos it held are tried once more, alone, and
  then recorded as failed;
- every supervisor publishes its workers' events in the store (their progress inside videos
  at most every few seconds, summed up); process 0 reads them all and keeps the progress
  (extractor/progress.py), the run log, the manifest, failed_videos.txt and the summary."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing.connection import wait as wait_for_connections
from pathlib import Path
from typing import Optional

import torch
import torch.multiprocessing as mp

from .datasets import file_sizes
from .decode.common import exit_description
from .pipeline import RunConfig, run_worker
from .progress import Progress, RunLog


@dataclass
class RunSummary:
    done: int = 0
    skipped: int = 0
    failed: dict = field(default_factory=dict)  # name -> reason
    clips: int = 0
    video_s: float = 0.0  # duration of the videos done (frames / fps)
    wall_s: float = 0.0
    startup_s: float = 0.0  # until the first worker had its model loaded (and compiled)
    last_result_s: float = 0.0  # until the last video was written (or failed); shutdown follows
    peak_ram_gib: float = 0.0  # largest peak memory of a worker with its decoder processes and buffers
    peak_gpu_gib: float = 0.0  # largest peak GPU memory allocated by a worker
    decode_s: float = 0.0
    model_s: float = 0.0
    save_s: float = 0.0
    backbone: Optional[str] = None
    worker_end_s: dict = field(default_factory=dict)  # rank -> seconds into the run its worker ran out of work

    def work_s(self) -> float:
        """Seconds of work: from the first worker ready to the last video written (start-up
        before and the processes' shutdown after are not work)."""
        end = self.last_result_s if self.last_result_s > self.startup_s else self.wall_s
        return max(0.0, end - self.startup_s)

    def end_idle(self) -> tuple[float, float]:
        """(seconds, fraction of the run) that the first worker to run out of work waited
        for the last one: the cost of imbalance."""
        if len(self.worker_end_s) < 2 or self.wall_s <= 0:
            return 0.0, 0.0
        spread = max(self.worker_end_s.values()) - min(self.worker_end_s.values())
        return spread, spread / self.wall_s


def cores_available() -> int:
    """CPU cores this process may run on (its affinity: a Slurm or container limit)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def order_longest_first(videos: list[Path]) -> list[Path]:
    def size(p: Path) -> int:
        try:
            return p.stat().st_size
        except OSError:
            return 0

    return sorted(videos, key=lambda p: (-size(p), p.name))


# ---------------------------------------------------------------------------------------
# The group: who is who, and the store


@dataclass
class Group:
    store: object  # a torch.distributed Store
    process: int  # this process's index; process 0 coordinates
    processes: int
    ranks: list  # the worker ranks this process supervises
    local_ranks: list  # ... and their GPU index on this node
    world_size: int  # workers in the whole run
    node_workers: int = 1  # workers on this node, which share its CPU cores

    @property
    def coordinator(self) -> bool:
        return self.process == 0


def launcher_environment() -> Optional[dict]:
    """Rank, world size and rendezvous when started by torchrun (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or by Slurm's srun with more than one task
    (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; MASTER_ADDR must be set, MASTER_PORT
    defaults to one derived from the job id). None: a plain single-process start."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
        node_workers = int(env.get("LOCAL_WORLD_SIZE", "1"))
        source = "torchrun"
    elif int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        local = int(env.get("SLURM_LOCALID", "0"))
        per_node = env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0].split(",")[0]
        node_workers = int(per_node) if per_node.isdigit() else 1
        source = "srun"
    else:
        return None
    addr = env.get("MASTER_ADDR")
    port = env.get("MASTER_PORT") or (str(20000 + int(env["SLURM_JOB_ID"]) % 20000) if "SLURM_JOB_ID" in env else None)
    return {"rank": rank, "world_size": world, "local_rank": local, "master_addr": addr, "master_port": port,
            "source": source, "node_workers": max(1, node_workers)}


def join_launcher_group(env: dict, timeout_s: float = 1800.0) -> Group:
    """Rendezvous through torch.distributed (env://): torchrun's agent store when torchrun
    serves one, else a TCPStore hosted by rank 0."""
    from torch.distributed import PrefixStore, rendezvous

    os.environ.update(RANK=str(env["rank"]), WORLD_SIZE=str(env["world_size"]),
                      MASTER_ADDR=env["master_addr"], MASTER_PORT=str(env["master_port"]))
    store, rank, world = next(rendezvous("env://", timeout=timedelta(seconds=timeout_s)))
    return Group(PrefixStore("feat_extraction/", store), process=rank, processes=world, ranks=[rank],
                 local_ranks=[env["local_rank"]], world_size=world, node_workers=env["node_workers"])


def local_group(world_size: int) -> Group:
    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, use_libuv=True,
                     timeout=timedelta(seconds=1800))
    return Group(store, process=0, processes=1, ranks=list(range(world_size)), local_ranks=list(range(world_size)),
                 world_size=world_size, node_workers=world_size)


def publish_todo(group: Group, names: list[str]) -> None:
    group.store.set("todo", json.dumps(names))


def read_todo(group: Group) -> list[str]:
    return json.loads(group.store.get("todo"))


class EventLog:
    """Events travel from every supervisor to the coordinator as numbered keys in the store."""

    def __init__(self, group: Group):
        self.group, self.store = group, group.store

    def publish(self, rank: int, ev: dict) -> None:
        seq = self.store.add("events", 1)
        self.store.set(f"event/{seq}", json.dumps({**ev, "rank": rank, "process": self.group.process, "t": time.time()}))

    def count(self) -> int:
        return self.store.add("events", 0)

    def take(self, seq: int) -> Optional[dict]:
        """Event `seq`, or None if its publisher has numbered it but not yet written it. Never
        a blocking get: it would hold the store client that the publisher, in this same
        process, needs to write the event."""
        key = f"event/{seq}"
        if not self.store.check([key]):
            return None
        ev = json.loads(self.store.get(key))
        self.store.delete_key(key)
        return ev


# ---------------------------------------------------------------------------------------
# The coordinator: reads every process's events into Progress


class Coordinator(threading.Thread):
    """Process 0's reader of the event log, until every process of the group has finished
    (or stopped sending heartbeats)."""

    def __init__(self, group: Group, progress: Progress, todo: list[str], lost_after_s: float):
        super().__init__(daemon=True, name="coordinator")
        self.group, self.progress, self.todo, self.lost_after_s = group, progress, todo, lost_after_s
        self.log = EventLog(group)
        self.error: Optional[BaseException] = None
        self.stopping = threading.Event()  # the run was interrupted: stop reading

    def run(self):
        try:
            self._run()
        except BaseException as e:  # the main thread reports it
            self.error = e

    def _run(self):
        store, processes = self.group.store, self.group.processes
        read, beats, lost = 0, {}, set()
        ranks_of: dict[int, set] = {}  # process -> the worker ranks its events came from
        while True:
            finished = store.add("processes_finished", 0)
            available = self.log.count()
            while read < available:
                ev = self.log.take(read + 1)
                if ev is None:
                    break
                read += 1
                ranks_of.setdefault(ev["process"], set()).add(ev["rank"])
                self.progress.handle(ev["rank"], ev)
            if finished + len(lost) >= processes and read == self.log.count():
                break
            if self.stopping.is_set():
                return
            self.progress.tick()
            now = time.monotonic()
            for p in range(1, processes):
                if p in lost or store.check([f"finished/{p}"]):
                    continue
                beat = store.add(f"beat/{p}", 0)
                if beats.get(p, (None, None))[0] != beat:
                    beats[p] = (beat, now)
                elif now - beats[p][1] > self.lost_after_s:
                    lost.add(p)
                    self.progress.say(f"process {p} sent no heartbeat for {self.lost_after_s:.0f}s: it is treated as "
                                      "lost and the videos it held as failed", err=True)
                    self.progress.lose_ranks(sorted(ranks_of.get(p, ())), "was lost (its process stopped responding)")
            time.sleep(0.05)
        claimed = min(store.add("claimed", 0), len(self.todo))
        for name in self.todo[claimed:]:
            self.progress.handle(-1, {"type": "failed", "video": name, "reason": "not processed: every worker stopped"})


# ---------------------------------------------------------------------------------------
# Workers and their supervisor


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


def one_visible_gpu(local_rank: int) -> bool:
    """Makes the worker's GPU (its local rank's, among those CUDA_VISIBLE_DEVICES lists or all)
    the only one CUDA shows this process, as cuda:0; called before CUDA starts here. Every
    worker then compiles the same code for the same device, so that the compile cache one
    worker wrote serves the others (compiled for cuda:1, a second GPU's worker missed the
    cache a run on cuda:0 had written). False, and nothing changed, where the GPUs cannot be
    counted without starting CUDA."""
    from .decode.nvdec import gpu_count_from_nvml

    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        names = [name.strip() for name in listed.split(",") if name.strip()]
    else:
        names = [str(i) for i in range(gpu_count_from_nvml())]
    if not names:
        return False
    os.environ["CUDA_VISIBLE_DEVICES"] = names[local_rank % len(names)]
    return True


def _worker_main(rank: int, local_rank: int, cfg: RunConfig, data_path: Path, conn, cpu_threads: int):
    """A worker, in a child process: claims videos from its supervisor over `conn` and runs
    the pipeline on them."""
    _die_with_parent()
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
        torch.set_num_threads(max(1, cpu_threads))
        if cfg.device == "cuda":
            device = torch.device("cuda", 0 if one_visible_gpu(local_rank) else
                                  local_rank % max(1, torch.cuda.device_count()))
        else:
            device = torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        run_worker(cfg, device, claim, report, cpu_budget=cpu_threads)
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


@dataclass
class _Worker:
    rank: int
    local_rank: int
    conn: object
    handle: object  # a Process, or a Thread when the worker runs in this process
    only: Optional[str] = None  # a retry: the one video this worker runs, alone, before it exits
    given: bool = False
    held: dict = field(default_factory=dict)  # name -> attempt
    waiting_claims: int = 0
    ready: bool = False
    clean_exit: bool = False
    decoding: dict = field(default_factory=dict)  # name -> when its decoding last moved (monotonic)
    stalled: list = field(default_factory=list)  # videos whose decoding hung: why the worker was killed


class Supervisor:
    """Starts this process's workers, serves their claims from the shared queue, publishes
    their events, and replaces a worker that dies. The videos a dead worker held are tried
    once more, each by a fresh worker that runs that video alone (a video that kills its
    worker cannot take innocent neighbours down twice); then the rank goes back to the queue.
    A rank whose worker dies three times in a row holding no video (at start-up, say) is
    given up. A worker whose decoding hangs is killed first (`_watch`). The workers' progress
    inside videos goes to process 0 as one event per PROGRESS_EVERY_S at most, whatever the
    number of workers (the store is not flooded)."""

    PROGRESS_EVERY_S = 2.0

    def __init__(self, group: Group, cfg: RunConfig, data_path: Path, todo: list[str], worker=None,
                 thread_arg=None):
        self.group, self.cfg, self.data_path, self.todo = group, cfg, data_path, todo
        self.worker = worker or _worker_main  # the tests' simulated workers speak the same protocol
        self.log = EventLog(group)
        # The tests' simulated workers run as threads of this process, given thread_arg.
        self.thread_arg = thread_arg
        self.cpu_threads = max(1, cores_available() // group.node_workers)
        self.attempts: dict[str, int] = {}
        self.retries: dict[int, list] = {r: [] for r in group.ranks}  # rank -> videos to try again, alone
        self.again: dict[int, list] = {r: [] for r in group.ranks}  # rank -> videos whose decoder died, to try again
        self.deaths: dict[int, int] = {r: 0 for r in group.ranks}  # rank -> deaths in a row holding no video
        self.decoded_frames: dict[str, tuple[int, int]] = {}  # video in progress -> (frames decoded, frames)
        self.progress_changed, self.progress_sent = False, 0.0
        self.ctx = mp.get_context("spawn")

    def _start(self, rank: int, local_rank: int, only: Optional[str] = None) -> _Worker:
        mine, theirs = self.ctx.Pipe(duplex=True)
        args = (rank, local_rank, self.cfg, self.data_path, theirs, self.cpu_threads)
        if self.thread_arg is not None:
            handle = threading.Thread(target=self.worker, args=(*args, self.thread_arg), daemon=True,
                                      name=f"worker{rank}")
            handle.start()
        else:
            handle = self.ctx.Process(target=self.worker, args=args, daemon=False, name=f"worker{rank}")
            handle.start()
            theirs.close()  # so that this end sees EOF when the worker exits
        return _Worker(rank, local_rank, mine, handle, only=only)

    def run(self) -> None:
        if not self.todo:
            return
        workers = {w.conn: w for w in (self._start(r, lr) for r, lr in zip(self.group.ranks, self.group.local_ranks))}
        last_beat = 0.0
        try:
            while workers:
                for conn in wait_for_connections(list(workers), timeout=1.0):
                    worker = workers[conn]
                    try:
                        msg = conn.recv()
                    except (EOFError, OSError):
                        del workers[conn]
                        successor = self._ended(worker)
                        if successor is not None:
                            workers[successor.conn] = successor
                        continue
                    self._message(worker, msg)
                self._publish_progress()
                if time.monotonic() - last_beat > min(5.0, self.cfg.lost_after_s / 4):
                    self.group.store.add(f"beat/{self.group.process}", 1)
                    last_beat = time.monotonic()
                    for worker in workers.values():
                        self._watch(worker)
        finally:
            for worker in workers.values():
                if not isinstance(worker.handle, threading.Thread) and worker.handle.is_alive():
                    worker.handle.kill()

    def _watch(self, worker: _Worker) -> None:
        """Kills a worker process in which a video's decoding has not moved for
        --decode_timeout_s (a hung decoder): it is then handled as a worker that died.
        (A worker that runs as a thread of this process cannot be killed.)"""
        now = time.monotonic()
        stalled = [n for n, t in worker.decoding.items() if now - t > self.cfg.decode_timeout_s]
        if stalled and not worker.stalled and not isinstance(worker.handle, threading.Thread):
            worker.stalled = stalled
            worker.handle.kill()

    def _publish(self, worker: _Worker, ev: dict) -> None:
        self.log.publish(worker.rank, ev)

    def _publish_progress(self) -> None:
        now = time.monotonic()
        if self.progress_changed and now - self.progress_sent >= self.PROGRESS_EVERY_S:
            self.log.publish(self.group.ranks[0], {"type": "progress", "videos": self.decoded_frames})
            self.progress_changed, self.progress_sent = False, now

    def _message(self, worker: _Worker, msg) -> None:
        if msg[0] == "claim":
            worker.waiting_claims += 1
            self._serve_claims(worker)
        elif msg[0] == "exit":
            worker.clean_exit = True
        else:
            ev = msg[1]
            kind = ev["type"]
            if kind == "progress":  # the watchdog's; sent on to process 0 summed up (_publish_progress)
                worker.decoding[ev["video"]] = time.monotonic()
                if "total" in ev:
                    self.decoded_frames[ev["video"]] = (ev["frames"], ev["total"])
                    self.progress_changed = True
                return
            if kind == "decoded":
                worker.decoding.pop(ev["video"], None)
                return
            if kind == "decoder_died":
                self._decoder_died(worker, ev["video"], ev["why"])
                return
            if kind == "ready":
                worker.ready = True
            elif kind in ("done", "failed"):
                worker.held.pop(ev["video"], None)
                worker.decoding.pop(ev["video"], None)
                self.decoded_frames.pop(ev["video"], None)
                self.deaths[worker.rank] = 0
            self._publish(worker, ev)

    def _decoder_died(self, worker: _Worker, name: str, why: str) -> None:
        """A decoder process of the worker died on `name` (the worker lives on and starts a
        fresh one): the video is tried once more by that worker, then recorded as failed."""
        worker.held.pop(name, None)
        worker.decoding.pop(name, None)
        if self.attempts.get(name, 0) >= 2:
            self._publish(worker, {"type": "failed", "video": name,
                                   "reason": f"its decoder died on both attempts (last: {why})"})
            return
        self.again[worker.rank].append(name)
        self._publish(worker, {"type": "released", "video": name})
        self._publish(worker, {"type": "warning", "video": name,
                               "msg": f"its decoder process died ({why}): it is tried once more"})

    def _serve_claims(self, worker: _Worker) -> None:
        while worker.waiting_claims:
            worker.waiting_claims -= 1
            left = None
            if worker.only is not None:
                name, worker.given = (None if worker.given else worker.only), True
            elif self.again[worker.rank]:
                name = self.again[worker.rank].pop(0)
            else:
                i = self.group.store.add("claimed", 1) - 1
                name = self.todo[i] if i < len(self.todo) else None
                left = max(0, len(self.todo) - i - 1) / self.group.world_size
            if name is None:
                worker.conn.send(None)
                continue
            attempt = self.attempts[name] = self.attempts.get(name, 0) + 1
            worker.held[name] = attempt
            worker.decoding[name] = time.monotonic()
            self._publish(worker, {"type": "claimed", "video": name, "attempt": attempt})
            worker.conn.send((name, attempt, left))

    def _queue_left(self) -> bool:
        return self.group.store.add("claimed", 0) < len(self.todo)

    def _ended(self, worker: _Worker) -> Optional[_Worker]:
        """The worker's connection closed: it finished, or it died. Returns its successor."""
        handle = worker.handle
        handle.join(timeout=30)
        worker.conn.close()
        rank = worker.rank
        if not (worker.clean_exit and not worker.held):
            why = "stopped" if isinstance(handle, threading.Thread) else exit_description(handle.exitcode)
            if worker.stalled:
                why = (f"killed: decoding {', '.join(worker.stalled)} made no progress for "
                       f"{self.cfg.decode_timeout_s:.0f}s")
            # A death with videos held uses up their attempts, so it cannot repeat forever;
            # deaths holding nothing (at start-up, between videos) are counted.
            self.deaths[rank] = 0 if worker.held else self.deaths[rank] + 1
            if worker.only is not None and not worker.given:  # died before it took its video
                self.retries[rank].insert(0, worker.only)
            again = []
            for name in sorted(worker.held, key=worker.held.get):
                self.decoded_frames.pop(name, None)
                if self.attempts[name] >= 2:
                    self._publish(worker, {"type": "failed", "video": name,
                                           "reason": f"its worker died on both attempts (last: {why})"})
                else:
                    again.append(name)
                    self._publish(worker, {"type": "released", "video": name})
            self.retries[rank].extend(again)
            can_restart = worker.ready and self.deaths[rank] <= 2 and self.thread_arg is None
            if not can_restart:
                for name in self.retries[rank] + self.again[rank]:
                    self._publish(worker, {"type": "failed", "video": name,
                                           "reason": f"its worker died ({why}) and could not be restarted"})
                self.retries[rank], self.again[rank] = [], []
                self._publish(worker, {"type": "warning", "video": None,
                                       "msg": f"worker stopped ({why}){'' if worker.ready else ' before its model was ready'}: "
                                              "the other workers carry on"})
                self._publish(worker, {"type": "worker_end"})
                return None
            held = f" holding {', '.join(again)}: each is tried once more, alone" if again else ""
            self._publish(worker, {"type": "warning", "video": None, "msg": f"worker died ({why}){held}"})
        if self.retries[rank]:
            successor = self._start(rank, worker.local_rank, only=self.retries[rank].pop(0))
        elif (worker.only is not None or not worker.clean_exit) and (self._queue_left() or self.again[rank]):
            successor = self._start(rank, worker.local_rank)
        else:
            self._publish(worker, {"type": "worker_end"})
            return None
        successor.ready = True  # it started before: a death at start-up counts against the rank
        return successor


# ---------------------------------------------------------------------------------------
# The run


def run_group(group: Group, cfg: RunConfig, data_path: Path, todo: Optional[list[str]], summary: RunSummary,
              on_video=None, worker=None, thread_arg=None, sizes: Optional[dict[str, int]] = None,
              log: Optional[RunLog] = None, log_every_s: float = 60.0) -> RunSummary:
    """Runs this process's share of the group's work. Process 0 passes the videos to do
    (names in data_path, longest first; `sizes`: their file sizes, else read here), and gets
    the whole run's summary and progress (lines through `log`); the others read the list
    from the store. Interrupted (Ctrl-C, SIGTERM), process 0 stops reading events, so that
    the summary holds what was recorded, and the KeyboardInterrupt goes on up."""
    coordinator = progress = None
    if group.coordinator:
        publish_todo(group, todo)
        if sizes is None:
            sizes = {name: size or 0 for name, size in file_sizes(data_path, todo).items()}
        progress = Progress(sizes, summary, log or RunLog(None), cfg.clip_len, cfg.stride, on_video, log_every_s)
        coordinator = Coordinator(group, progress, todo, cfg.lost_after_s)
        coordinator.start()
    else:
        todo = read_todo(group)
    try:
        Supervisor(group, cfg, data_path, todo, worker, thread_arg).run()
    except KeyboardInterrupt:
        if coordinator is not None:
            coordinator.stopping.set()
            coordinator.join(timeout=10)
            progress.close()
        raise
    finally:
        group.store.set(f"finished/{group.process}", "1")
        group.store.add("processes_finished", 1)
    if coordinator is not None:
        coordinator.join()
        progress.close()
        if coordinator.error is not None:
            raise coordinator.error
    return summary


def launch(cfg: RunConfig, videos: list[Path], world_size: int, summary: RunSummary, on_video=None) -> RunSummary:
    """A single-process start over `videos` (all in one folder): this process supervises
    `world_size` workers."""
    group = local_group(world_size)
    return run_group(group, cfg, videos[0].parent, [p.name for p in order_longest_first(videos)], summary, on_video)
