"""A process's supervisor of its workers: the shared queue's claims, their events, and the
replacement of a worker that dies, with the videos it held tried once more."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_for_connections
from pathlib import Path
from typing import Optional

from ..config import RunConfig
from ..decode.common import exit_description
from ..worker_server import worker_context
from .group import EventLog, Group
from .worker import cores_available, worker_main


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
    spawn_me: bool = False  # it could not use CUDA (forked after CUDA started in its server): start it spawned


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
        self.worker = worker or worker_main  # the tests' simulated workers speak the same protocol
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
        self.ctx = worker_context(cfg.compile, cfg.model_type)

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
        elif msg[0] == "spawn_me":  # forked from a server in which CUDA had started: it cannot use CUDA
            worker.spawn_me = True
            if self.ctx.get_start_method() != "spawn":
                self.ctx = mp.get_context("spawn")
                self._publish(worker, {"type": "warning", "video": None,
                                       "msg": "workers are spawned instead of forked from the workers' server, in "
                                              "which CUDA had started (each imports torch itself: a slower start)"})
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
        if worker.spawn_me:
            return self._start(rank, worker.local_rank, only=worker.only)
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
