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
  (extractor/progress.py), the run log, the manifest, failed_videos.txt and the summary.

Here: the run as a whole (run_group, launch) and its summary. Beside it: group.py (the
group and its store), worker.py (a worker process), supervisor.py (a process's workers and
the queue's claims), coordinator.py (process 0's reading of the events)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..datasets import file_sizes
from ..config import RunConfig
from ..progress import Progress, RunLog
from .coordinator import Coordinator
from .group import (EventLog, Group, GroupError, join_launcher_group, launcher_environment, local_group, publish_todo,
                    read_todo)
from .supervisor import Supervisor
from .worker import cores_available, dump_stacks_on_sigusr1, injected_fault, process_start_time

__all__ = ["RunSummary", "order_longest_first", "run_group", "launch", "cores_available", "dump_stacks_on_sigusr1",
           "injected_fault", "EventLog", "Group", "GroupError", "join_launcher_group", "launcher_environment",
           "local_group", "Supervisor"]


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


def order_longest_first(videos: list[Path]) -> list[Path]:
    def size(p: Path) -> int:
        try:
            return p.stat().st_size
        except OSError:
            return 0

    return sorted(videos, key=lambda p: (-size(p), p.name))


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
        progress = Progress(sizes, summary, log or RunLog(None), cfg.clip_len, cfg.stride, on_video, log_every_s,
                            command_started=process_start_time())
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
        try:
            group.store.set(f"finished/{group.process}", "1")
            group.store.add("processes_finished", 1)
        except RuntimeError:  # the store is gone (process 0 stopped): the error that said so goes on up
            pass
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
