"""Process 0's reader of every process's events: the run's progress, log and records."""

from __future__ import annotations

import threading
import time
from typing import Optional

from ..progress import LOST_WHILE_HOLDING, Progress
from .group import EventLog, Group


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
        numbered, beats, lost = 0, {}, set()
        unread: dict[int, float] = {}  # event number -> when it was first found numbered and not yet written
        ranks_of: dict[int, set] = {}  # process -> the worker ranks its events came from
        while True:
            finished = store.add("processes_finished", 0)
            now = time.monotonic()
            available = self.log.count()
            unread.update((seq, now) for seq in range(numbered + 1, available + 1))
            numbered = available
            # Events are read in number order, past any not yet written: a process killed
            # between numbering an event and writing it leaves a hole that never fills, and
            # one process's events are written in order, so nothing after the hole waits on it.
            for seq in sorted(unread):
                ev = self.log.take(seq)
                if ev is None:
                    if now - unread[seq] > self.lost_after_s:
                        del unread[seq]
                    continue
                del unread[seq]
                ranks_of.setdefault(ev["process"], set()).add(ev["rank"])
                self.progress.handle(ev["rank"], ev)
            if finished + len(lost) >= processes and not unread and numbered == self.log.count():
                break
            if self.stopping.is_set():
                return
            self.progress.tick()
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
        # Every video gets a result. One claimed with none was held by a process that was
        # lost (killed after claiming it and before saying so, or while it waited for a retry).
        claimed = min(store.add("claimed", 0), len(self.todo))
        for i, name in enumerate(self.todo):
            if not self.progress.has_result(name):
                reason = f"its process was lost {LOST_WHILE_HOLDING}" if i < claimed else \
                    "not processed: every worker stopped"
                self.progress.handle(-1, {"type": "failed", "video": name, "reason": reason})
