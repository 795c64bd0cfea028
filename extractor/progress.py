"""What process 0 tells the user while a run goes, and what it keeps of it: the per-video
lines, warnings, the progress bar (or, when stderr is not a terminal, a plain progress line
every --log_every_s), and run.log, which holds all of these with a timestamp.

Progress is measured in the work itself, not in videos: the bytes of video done out of
the bytes to do. A finished video counts its file size; a video being decoded counts the
share of its frames decoded so far (its workers report it every few seconds), so the
measure moves steadily from the start, even while every worker is on a long video. The
rate and the ETA count from the moment the first worker was ready (model loaded and
compiled): start-up is not work."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

RUN_LOG = "run.log"
# ends the failure reason of a video whose worker was lost while holding it (feat_extraction keeps
# such a video as done when its features were written before the loss)
LOST_WHILE_HOLDING = "while holding it"


class RunLog:
    """Process 0's lines: printed (stdout, or stderr for warnings and failures) and appended
    to run.log with a timestamp. Each line is flushed as it is written, so a killed run
    keeps its log; a log that cannot be written costs one warning, never the run."""

    def __init__(self, path: Optional[Path]):
        self.path, self.file = path, None
        self.lock = threading.Lock()
        if path is not None:
            try:
                self.file = open(path, "a", encoding="utf-8")
            except OSError as e:
                self._give_up(e)

    def say(self, text: str, err: bool = False) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr if err else sys.stdout)  # above the progress bar, if one is shown
        self.keep(text)

    def keep(self, text: str) -> None:
        """run.log only."""
        with self.lock:
            if self.file is None:
                return
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            try:
                self.file.write("".join(f"{stamp} {line}\n" for line in text.splitlines()))
                self.file.flush()
            except OSError as e:
                self._give_up(e)

    def _give_up(self, error: OSError) -> None:
        self.file = None
        print(f"warning: cannot write {self.path} ({error.strerror or error}): the run goes on without its log",
              file=sys.stderr)

    def close(self) -> None:
        with self.lock:
            if self.file is not None:
                self.file.close()
                self.file = None


class WorkMeter:
    """The run's work in bytes of video. A finished video counts its file size; a video in
    progress, its size times the share of its frames decoded. A failed video counts the
    share it got through, and the rest leaves the total (it will not be done); a video
    whose worker died starts again from nothing."""

    def __init__(self, sizes: dict[str, int]):
        self.sizes = sizes
        self.total = float(sum(sizes.values()))
        self.finished = 0.0  # bytes of the videos that have ended
        self.decoding: dict[str, tuple[int, int]] = {}  # video in progress -> (frames decoded, frames)
        self.ended_videos: set[str] = set()

    @staticmethod
    def _share(frames: int, total: int) -> float:
        return min(1.0, frames / total) if total > 0 else 0.0

    def started(self, name: str) -> None:
        self.decoding[name] = (0, 0)

    def moved(self, name: str, frames: int, total: int) -> None:
        if name in self.decoding:  # not a late report about a video that has ended
            self.decoding[name] = (frames, total)

    def ended(self, name: str, done: bool) -> None:
        if name in self.ended_videos:  # a late event about a video already recorded (its process was lost)
            return
        self.ended_videos.add(name)
        share = 1.0 if done else self._share(*self.decoding.get(name, (0, 0)))
        size = self.sizes.get(name, 0)
        self.decoding.pop(name, None)
        self.finished += size * share
        self.total -= size * (1.0 - share)

    def restarted(self, name: str) -> None:
        self.decoding.pop(name, None)

    def done(self) -> float:
        return self.finished + sum(self.sizes.get(n, 0) * self._share(f, t) for n, (f, t) in self.decoding.items())

    def clips_in_progress(self, clip_len: int, stride: int) -> float:
        """Clips of the videos in progress, by the share of their frames decoded."""
        return sum((len(range(0, total - clip_len + 1, stride)) or 1) * self._share(frames, total)
                   for frames, total in self.decoding.values() if total > 0)


@dataclass
class ProgressSnapshot:
    fraction: float  # of the work (bytes of video) done
    eta_s: Optional[float]  # None until work has been measured
    started: bool  # a worker has its model ready
    clips_per_s: float
    elapsed_s: float
    videos: int  # to do in this run
    done: int
    failed: int
    skipped: int  # already done before this run

    def describe(self) -> str:
        """Everything but the share of the work done (the bar shows that itself)."""
        eta = hms(self.eta_s) if self.eta_s is not None else "?" if self.started else "? (workers starting)"
        return (f"ETA {eta} | {self.clips_per_s:.1f} clips/s | {self.done + self.failed}/{self.videos} videos: "
                f"{self.done} done, {self.failed} failed | {self.skipped} skipped | elapsed {hms(self.elapsed_s)}")

    def line(self) -> str:
        return f"progress: {self.fraction:.1%} of the work | {self.describe()}"


def hms(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Process 0's view of the whole group's work. Receives every worker's events (from the
    store): prints a line per video, keeps the summary and the work meter, calls `on_video`
    with each finished or failed video (the manifest), and on `tick` shows the progress: a
    bar on a terminal, else a plain line every `log_every_s` (always into run.log)."""

    BAR_REFRESH_S = 0.5

    def __init__(self, sizes: dict[str, int], summary, log: RunLog, clip_len: int, stride: int,
                 on_video: Optional[Callable[[dict], None]] = None, log_every_s: float = 60.0,
                 bar_file=None, clock: Callable[[], float] = time.monotonic, command_started: Optional[float] = None):
        """`command_started`: when this process started (wall clock), for the start-up's whole
        length beside the run's."""
        self.summary, self.log, self.on_video = summary, log, on_video
        self.command_started = command_started
        self.clip_len, self.stride, self.log_every_s, self.clock = clip_len, stride, log_every_s, clock
        self.meter = WorkMeter(sizes)
        self.videos = len(sizes) + len(summary.failed)  # failed already: listed videos that do not exist
        self.t0 = clock()
        self.t0_wall = time.time()  # events carry their sender's wall-clock time
        self.t_ready: Optional[float] = None
        self.held: dict[int, set] = {}  # rank -> videos claimed and not finished
        self.decoding_said: set = set()  # each distinct decoder set-up is said once
        self.lock = threading.Lock()
        self.next_line = self.t0 + log_every_s
        self.next_refresh = self.t0
        if bar_file is None and sys.stderr.isatty():
            bar_file = sys.stderr
        self.bar = None
        if bar_file is not None:
            from tqdm import tqdm

            self.bar = tqdm(total=1000, file=bar_file, dynamic_ncols=True, bar_format="{percentage:3.0f}%|{bar:16}| {desc}")

    def say(self, text: str, err: bool = False):
        self.log.say(text, err)

    def handle(self, rank: int, ev: dict):
        with self.lock:
            self._handle(rank, ev)

    def _handle(self, rank: int, ev: dict):
        kind, s = ev["type"], self.summary
        name = ev.get("video")
        if kind == "claimed":
            self.held.setdefault(rank, set()).add(name)
            self.meter.started(name)
        elif kind == "progress":  # a supervisor's videos in progress: name -> [frames decoded, frames]
            for video, (frames, total) in ev["videos"].items():
                self.meter.moved(video, frames, total)
        elif kind == "ready":
            s.backbone = ev["backbone"]
            if self.t_ready is None:
                self.t_ready = self.clock()
                s.startup_s = self.t_ready - self.t0
            new = ev.get("decoding") and ev["decoding"] not in self.decoding_said
            if new:
                self.decoding_said.add(ev["decoding"])
            parts = ", ".join(f"{part} {s:.1f}s" for part, s in (ev.get("startup") or {}).items())
            since = (f", {time.time() - self.command_started:.1f}s after the command started"
                     if self.command_started is not None else "")
            self.say(f"[R{rank}] ready after {self.clock() - self.t0:.1f}s{since}" + (f" (worker: {parts})" if parts else "")
                     + (f" | model alone {ev['model_rate']:.1f} clips/s (3 batches of random clips)"
                        if ev.get("model_rate") else "")
                     + (f" | decoding: {ev['decoding']}" if new else ""))
        elif kind == "done":
            self.held.get(rank, set()).discard(name)
            self.meter.ended(name, done=True)
            s.failed.pop(name, None)  # recorded failed when its process seemed lost; it was only slow
            s.done += 1
            s.last_result_s = self.clock() - self.t0
            s.clips += ev["clips"]
            s.video_s += ev["frames"] / ev["fps"] if ev["fps"] else 0.0
            s.decode_s += ev["decode_s"]
            s.model_s += ev["model_s"]
            s.save_s += ev["save_s"]
            self.say(f"[R{rank}] {name}: {ev['clips']} clips ({ev['frames']} frames @ {ev['fps']:.2f} fps) | "
                     f"decode ({ev['decoder']}) {ev['decode_s']:.2f}s | model {ev['model_s']:.2f}s | save {ev['save_s']:.3f}s")
            self._record(ev)
        elif kind == "failed":
            self.held.get(rank, set()).discard(name)
            self.meter.ended(name, done=False)
            s.failed[name] = ev["reason"]
            s.last_result_s = self.clock() - self.t0
            self.say(f"[R{rank}] FAILED {name}: {ev['reason']}", err=True)
            self._record(ev)
        elif kind == "released":  # the worker died holding it; its supervisor will try it again
            self.held.get(rank, set()).discard(name)
            self.meter.restarted(name)
        elif kind == "warning":
            where = f" {name}:" if name else ""
            self.say(f"[R{rank}] warning:{where} {ev['msg']}", err=True)
        elif kind == "peak":
            s.peak_ram_gib = max(s.peak_ram_gib, ev["ram_gib"])
            s.peak_gpu_gib = max(s.peak_gpu_gib, ev["gpu_gib"])
            if ev.get("clips"):  # the worker's own rate, from its first batch to its end
                self.say(f"[R{rank}] worker: {ev['clips']} clips in {ev['work_s']:.1f}s from its first batch = "
                         f"{ev['clips'] / max(1e-9, ev['work_s']):.1f} clips/s | waited for frames "
                         f"{ev['waited_s']:.1f}s" + (f" | first frames {ev['first_frames_s']:.2f}s after ready"
                                                     if ev.get("first_frames_s") else "")
                         + main_thread(ev.get("main_thread"))
                         + frames_by_decoder(ev.get("frames_by_decoder")) + nvdec_use(ev.get("nvdec"), ev["work_s"]))
            if ev.get("eager_calls"):
                self.say(f"[R{rank}] warning: {ev['eager_calls']} calls ran eagerly, a compiled graph missing after "
                         f"start-up: {ev.get('eager_why', '')}", err=True)
        elif kind == "worker_end":
            s.worker_end_s[rank] = ev.get("t", time.time()) - self.t0_wall
        elif kind == "fatal":
            self.say(f"[R{rank}] worker stopped: {ev['msg']}", err=True)

    def _record(self, ev: dict):
        if self.on_video is not None:
            try:
                self.on_video(ev)
            except OSError as e:
                self.say(f"warning: cannot write the manifest: {e}", err=True)

    def has_result(self, name: str) -> bool:
        """Whether the video was recorded done or failed."""
        with self.lock:
            return name in self.meter.ended_videos

    def lose_ranks(self, ranks: list, why: str):
        with self.lock:
            for rank in ranks:
                for name in sorted(self.held.pop(rank, set())):
                    self._handle(rank, {"type": "failed", "video": name, "reason": f"worker {rank} {why} {LOST_WHILE_HOLDING}"})

    def snapshot(self) -> ProgressSnapshot:
        with self.lock:
            now, s, meter = self.clock(), self.summary, self.meter
            busy = now - self.t_ready if self.t_ready is not None else 0.0
            done = meter.done()
            rate = done / busy if busy > 0 and done > 0 else 0.0
            clips = s.clips + meter.clips_in_progress(self.clip_len, self.stride)
            return ProgressSnapshot(
                fraction=done / meter.total if meter.total > 0 else 1.0,
                eta_s=max(0.0, meter.total - done) / rate if rate > 0 else None, started=self.t_ready is not None,
                clips_per_s=clips / busy if busy > 0 else 0.0, elapsed_s=now - self.t0,
                videos=self.videos, done=s.done, failed=len(s.failed), skipped=s.skipped)

    def tick(self):
        """Called a few times a second: refreshes the bar; every log_every_s, a progress line."""
        now = self.clock()
        if now >= self.next_line:
            self.next_line = now + self.log_every_s
            line = self.snapshot().line()
            if self.bar is None:
                self.say(line, err=True)
            else:
                self.log.keep(line)
        if self.bar is not None and now >= self.next_refresh:
            self.next_refresh = now + self.BAR_REFRESH_S
            self._refresh_bar()

    def _refresh_bar(self):
        snap = self.snapshot()
        self.bar.n = int(snap.fraction * 1000)
        self.bar.set_description_str(snap.describe(), refresh=True)

    def close(self):
        self.summary.wall_s = self.clock() - self.t0
        if self.bar is not None:
            self._refresh_bar()
            self.bar.close()


def main_thread(spent: Optional[dict]) -> str:
    """' | main thread: converting 1.2s, clips 0.3s, launching 2.0s, collecting 20.1s': where a
    worker's main thread spent its time besides waiting for frames (collecting includes
    waiting for the device to finish a batch)."""
    if not spent:
        return ""
    return " | main thread: " + ", ".join(f"{part} {seconds:.1f}s" for part, seconds in spent.items())


def frames_by_decoder(counts) -> str:
    """' | frames decoded: NVDEC 1,234, CPU 5,678' where NVDEC decoded some ('' otherwise)."""
    if not counts or not counts.get("nvdec"):
        return ""
    return f" | frames decoded: NVDEC {counts['nvdec']:,}, CPU {counts.get('cpu', 0):,}"


def shares(seconds_by_what: dict, total: float) -> str:
    """'decoding 50%, waiting for the GPU 30%': each positive part as a share of `total`,
    largest first ('' when there is none or total is not positive)."""
    parts = sorted(((what, s) for what, s in seconds_by_what.items() if s > 0), key=lambda kv: -kv[1])
    return ", ".join(f"{what} {s / total:.0%}" for what, s in parts) if total > 0 else ""


def nvdec_use(use, work_s: float) -> str:
    """' | NVDEC sessions busy 64% of the time (decoding 50%, waiting for the GPU 30%, ...);
    idle for want of a claim: no videos left 37%, ... | probes for NVDEC: 45, 0.17s on
    average, longest 0.35s' where the worker has NVDEC sessions ('' otherwise). Busy: holding
    a video; the shares in brackets are of that busy time, by what it went to (nvdec.SPENT).
    The idle shares are of the session-seconds idle, by why no video was claimed for a
    session (FrameSource._feed_nvdec_sessions)."""
    if not use or not use.get("sessions"):
        return ""
    busy = use["busy_s"] / max(1e-9, use["sessions"] * work_s)
    probes = use["count"]
    mean = use["total_s"] / probes if probes else 0.0
    idle = {why: seconds for why, seconds in (use.get("idle_s") or {}).items() if why}
    why = shares(idle, sum(v for v in idle.values() if v > 0))
    how = shares(use.get("spent") or {}, use["busy_s"])
    return (f" | NVDEC sessions busy {busy:.0%} of the time" + (f" ({how})" if how else "")
            + (f"; idle for want of a claim: {why}" if why else "")
            + f" | probes for NVDEC: {probes}, {mean:.2f}s on average, longest {use['longest_s']:.2f}s")
