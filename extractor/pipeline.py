"""One worker's run: its frame source (decoder processes and NVDEC sessions) feeds a queue;
the main thread turns chunks into model input on the model's device, slides clips, runs
full batches (which may span videos) on the engine (extractor/engine.py) and hands
finished videos to a saver thread."""

from __future__ import annotations

import gc
import os
import queue
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .backbones import Backbone, open_backbone
from .config import DTYPES, RunConfig
from .decode.gpu import leave_sms_to_nvdec
from .decode.job import DecodeJob
from .decode.plan import plan_decoding
from .decode.processes import process_pss_bytes
from .decode.source import FrameSource
from .engine import Engine, Report, WeightsLoader
from .outputs import save_features
from .video import RECOMPILE, ClipAssembler, InputMaker
Claim = Callable[[], Optional[Path]]


@dataclass
class VideoJob(DecodeJob):
    """A video (or a segment of one: `root` is its video) as the worker keeps it: the frame
    source's fields (DecodeJob), and its clips on their way through the model."""
    assembler: Optional[ClipAssembler] = None
    features: Optional[np.ndarray] = None  # (clips, width); a segment's: its rows of the video's
    filled: int = 0  # clips whose features are back
    launched: int = 0  # clips of it given to the model so far
    decoded: bool = False
    failed: bool = False
    model_s: float = 0.0

    def complete(self) -> bool:
        """Every clip of the video decoded and its features back from the model."""
        return all(part.decoded and part.filled == len(part.starts) for part in (self.parts or [self]))


class Saver:
    """Writes finished videos' features on a background thread, in order of completion."""

    def __init__(self, cfg: RunConfig, report: Report):
        self.cfg, self.report = cfg, report
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="saver")
        self.thread.start()

    def put(self, job: VideoJob):
        self.queue.put(job)

    def _loop(self):
        while True:
            job = self.queue.get()
            if job is None:
                return
            t0 = time.perf_counter()
            try:
                save_features(self.cfg.output_path(job.path), job.features)
            except OSError as e:
                self.report({"type": "failed", "video": self.cfg.video_name(job.path),
                             "reason": f"cannot write features: {e}"})
                continue
            self.report({
                "type": "done", "video": job.name, "path": str(job.path.resolve()),
                "feature_file": self.cfg.output_path(job.path).name, "clips": len(job.starts),
                "frames": job.info.num_frames, "fps": job.info.fps, "width": int(job.features.shape[1]),
                "decoder": job.decoder, "decoder_note": job.decoder_note, "rotation": job.info.rotation,
                "decode_s": job.decode_s,
                "model_s": job.model_s, "save_s": time.perf_counter() - t0,
                "wall_s": time.perf_counter() - job.t_claimed,
            })

    def close(self):
        self.queue.put(None)
        self.thread.join()


QUEUED_BATCHES = 2  # batches launched and not collected before the main thread waits for the device


class ClaimPace:
    """Takes clips the model ran (or will not run) off the frame source's count of the
    clips this worker holds, and sets its budget: HELD_SECONDS of the model's own rate
    (clips per second of its GPU time, not of the run: a worker short of frames must still
    hold enough videos to keep every decoder busy), once the model has run for a second."""

    def __init__(self, source: FrameSource):
        self.source = source
        self.t0 = 0.0  # when the first batch was launched
        self.total = 0  # clips launched
        self.waited_s = 0.0  # since the first batch, the main thread's time waiting for frames
        self.model_clips, self.model_s = 0, 0.0

    def dropped(self, clips: int):
        self.source.hold(-clips)

    def launching(self):
        self.t0 = self.t0 or time.perf_counter()

    def launched(self, clips: int):
        self.source.hold(-clips)
        self.total += clips

    def ran(self, clips: int, seconds: float):
        self.model_clips += clips
        self.model_s += seconds
        if self.model_s >= 1.0:
            self.source.know_model_rate(self.model_clips / self.model_s)


class MemoryWatch(threading.Thread):
    """Samples, every 3 seconds, the memory of this worker and its decoder processes together
    (proportional set size, so shared buffers count once) and keeps the peak."""

    def __init__(self, source: FrameSource):
        super().__init__(daemon=True, name="memory")
        self.source, self.peak, self.stop = source, 0, threading.Event()

    def sample(self):
        own = process_pss_bytes(os.getpid())
        if own is None:  # no /proc: this process's own peak resident memory
            import resource

            own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak = max(self.peak, own + self.source.pss_bytes())

    def run(self):
        while not self.stop.wait(3.0):  # reading a CUDA process's smaps is not free
            self.sample()


def run_worker(cfg: RunConfig, device: torch.device, claim: Claim, report: Report,
               backbone: Optional[Backbone] = None, cpu_budget: int = 1, startup: Optional[dict] = None) -> None:
    """Claims videos until none are left, writing one feature file per video. `backbone`:
    one already opened (else the worker opens cfg.ckpt_path). `startup`: seconds of the
    worker's start before this call, by part, for its "ready" event (which adds its own).

    Teardown runs in an order that frees no CUDA memory after its context is gone: every
    tensor of the run is dropped with `_work`'s frame (its threads joined by then), the
    allocator is emptied on the device, the default stream made current again, and only
    then is the green context the model ran in released (freed the other way round, a
    tensor's free recorded an event on a destroyed context: 'terminate called ... context
    is destroyed', SIGABRT, in 2 of 11 runs on an H200)."""
    t0 = time.perf_counter()
    if not cfg.verbose:  # inductor's advice on an fp32 run (the user asked for exact fp32)
        warnings.filterwarnings("ignore", message=".*TensorFloat32 tensor cores.*")
    plan = plan_decoding(cfg.decode_options(), device, cpu_budget)
    green = None  # the green context the model runs in (held until every tensor is freed), leaving SMs to NVDEC
    if plan.nvdec_sms:
        green, why = leave_sms_to_nvdec(device, plan.nvdec_sms)
        if why:
            plan.nvdec_sms = 0
            report({"type": "warning", "video": None, "msg": f"the model runs on every SM, NVDEC beside it slower "
                                                             f"(no green context: {why})"})
    try:
        _work(cfg, device, claim, report, backbone, plan, t0, dict(startup or {}))
    finally:
        if cfg.compile:
            set_stance("default")
        release_device(device)
        del green


def set_stance(stance: str) -> None:
    """torch.compiler.set_stance where the torch release has it (2.6 on)."""
    if hasattr(torch.compiler, "set_stance"):
        torch.compiler.set_stance(stance)


def release_device(device: torch.device) -> None:
    """Frees what the run left on the device, with the green context still alive: unreachable
    tensors collected, the device's work finished and its cached memory (and the events
    recorded on it) released, the default stream current again."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.set_stream(torch.cuda.default_stream(device))


def _work(cfg: RunConfig, device: torch.device, claim: Claim, report: Report, backbone: Optional[Backbone],
          plan, t0: float, startup: dict) -> None:
    """`startup`: seconds of each part of the worker's start-up, in order, for its "ready" line."""

    def lap(part: str, seconds: Optional[float] = None):
        nonlocal t0
        startup[part] = startup.get(part, 0.0) + (time.perf_counter() - t0 if seconds is None else seconds)
        t0 = time.perf_counter()

    lap("device")  # the decoding plan and the green context
    # A spawned worker opens the checkpoint itself, beside its main thread when it knows the
    # backbone's preprocessing already (cfg.preprocessing: process 0 opened it before).
    if backbone is None and cfg.preprocessing is None:
        backbone = open_backbone(cfg.model_type, cfg.ckpt_path, cfg.backbone_options())
        lap("open")
    weights = WeightsLoader(cfg, backbone, device)
    maker = InputMaker(device, backbone.preprocessing if backbone else cfg.preprocessing, DTYPES[cfg.dtype],
                       cfg.compile)
    lap("maker")  # with compile, torch.compile's first call: it imports dynamo and inductor
    # The decoder processes start now and fill their buffers while the model compiles;
    # NVDEC sessions, which run compiled conversions in this process, once it has.
    source = FrameSource(plan, cfg.clip_len, cfg.stride, cfg.decode_timeout_s, claim, report,
                         lambda path: VideoJob(path, cfg.video_name(path)), device, maker)
    lap("decoders")
    saver = memory = None
    try:
        if cfg.compile:
            maker.warm_up()  # (compiles the conversion while the weights load)
            lap("conversions")
        backbone, clip_features = weights.result()
        lap("load")  # what opening the checkpoint and loading the weights took beyond the conversion's compilation
        engine = Engine(cfg, device, report, backbone, clip_features)
        lap("compile", engine.compile_s)
        model_rate = None
        if cfg.compile:
            if engine.cuda:  # (uncompiled or on the CPU, the first second of real batches measures it)
                model_rate = engine.measure_rate()
                source.know_model_rate(model_rate)
                lap("rate")
            # From here on nothing compiles: a call that would runs eagerly (and says so) rather
            # than hold every thread that converts frames or runs the model while it compiles.
            set_stance(RECOMPILE)
        source.start_sessions()
        t_ready = time.perf_counter()
        report({"type": "ready", "backbone": engine.description, "width": engine.width, "decoding": plan.describe(),
                "startup": startup, **({"model_rate": round(model_rate, 1)} if model_rate else {})})
        saver = Saver(cfg, report)
        memory = MemoryWatch(source)
        memory.start()
    except BaseException:
        weights.join()  # (no tensor may arrive on the device once teardown has begun)
        source.close()
        raise
    pending: list[tuple[VideoJob, int, torch.Tensor]] = []  # clips waiting for a batch
    in_flight: list = []  # submitted batches whose features are not back yet

    def finish_if_complete(video: VideoJob):
        if not video.failed and video.features is not None and video.complete():
            saver.put(video)

    # Where the main thread's time goes besides waiting for frames (pace.waited_s), from the
    # first batch on: what bounds a run whose model is faster than this thread can feed it.
    spent = {"converting": 0.0, "clips": 0.0, "launching": 0.0, "collecting": 0.0}

    def collect(batch):
        t = time.perf_counter()
        _collect(batch)
        spent["collecting"] += time.perf_counter() - t

    def _collect(batch):
        owners, handles = batch
        feats, seconds = engine.result(handles)
        pace.ran(len(owners), seconds)
        rows = feats.numpy()  # (one torch call: in this process each costs a turn of the GIL)
        for row, (job, num) in enumerate(owners):
            if not job.video.failed:
                job.features[num] = rows[row]
                job.filled += 1
                job.video.model_s += seconds / len(owners)
        for video in {id(j.video): j.video for j, _ in owners}.values():
            finish_if_complete(video)

    pace = ClaimPace(source)
    first_frames_s = 0.0  # after ready, when the first frames reached this thread

    def launch(final: bool):
        nonlocal pending
        while len(pending) >= engine.batch or (final and pending):
            take, pending = pending[:engine.batch], pending[engine.batch:]
            take = [(job, num, clip) for job, num, clip in take if not job.video.failed]
            if not take:
                continue
            pace.launching()  # (on the CPU, submit runs the batch)
            t = time.perf_counter()
            in_flight.append(([(job, num) for job, num, _ in take], engine.submit([clip for _, _, clip in take])))
            spent["launching"] += time.perf_counter() - t
            for job, _, _ in take:
                job.video.launched += 1
            pace.launched(len(take))
            # Collect the batches the device has finished; wait for one only with more than
            # QUEUED_BATCHES queued, so that this thread goes back to the frames at once.
            while in_flight and (len(in_flight) > QUEUED_BATCHES or engine.finished(in_flight[0][1])):
                collect(in_flight.pop(0))

    def drop(video: VideoJob):
        if not video.failed:
            pace.dropped(len(video.starts) - video.launched)
        video.failed, video.assembler = True, None
        for part in video.parts:
            part.assembler = None

    try:
        while True:
            t_wait = time.perf_counter()
            event = source.get()
            if pace.t0:
                pace.waited_s += time.perf_counter() - t_wait
            kind, job = event[0], event[1]
            if kind == "exit":
                break
            if kind == "fatal":
                raise RuntimeError(event[2])
            if kind == "open":
                job.features = np.empty((len(job.starts), engine.width), dtype=np.float32)
                for part in job.parts or [job]:
                    part.assembler = ClipAssembler(part.starts, cfg.clip_len, job.info.num_frames)
                    part.features = job.features[part.first_clip:part.first_clip + len(part.starts)]
                if job.info.num_frames < cfg.clip_len:
                    report({"type": "warning", "video": job.name,
                            "msg": f"{job.info.num_frames} frames, shorter than one clip of {cfg.clip_len}: "
                                   "one clip padded with its last frame"})
            elif kind == "frames":
                first_frames_s = first_frames_s or time.perf_counter() - t_ready
                chunk = event[3]
                if job.video.failed:
                    chunk.discard()
                    continue
                t = time.perf_counter()
                with torch.inference_mode():
                    x = chunk.to_input(maker)
                t_made = time.perf_counter()
                nums, clips = job.assembler.push(event[2], x)
                pending.extend((job, num, clip) for num, clip in zip(nums, clips))
                if pace.t0:  # (the worker's window: from its first batch, as its rate and waits)
                    spent["converting"] += t_made - t
                    spent["clips"] += time.perf_counter() - t_made
                launch(final=False)
            elif kind == "decoded":
                job.decoded = True
                if job.video.failed:
                    continue
                if not job.assembler.done:
                    report({"type": "failed", "video": job.name,
                            "reason": f"decoder returned too few frames ({job.first_clip + job.assembler.next_clip} "
                                      f"of {len(job.video.starts)} clips)"})
                    drop(job.video)
                job.assembler = None
                finish_if_complete(job.video)
            elif kind == "fail":
                if not job.video.failed:
                    report({"type": "failed", "video": job.name, "reason": event[2]})
                drop(job.video)
            elif kind == "abandon":  # its decoder died; the supervisor decides what happens to it
                drop(job)
        launch(final=True)
        while in_flight:
            collect(in_flight.pop(0))
    finally:
        memory.stop.set()
        source.close()
        saver.close()
        backbone.module = None  # (a backbone the caller opened must not keep the model on the device)
    memory.sample()
    report({"type": "peak", "ram_gib": memory.peak / 2**30,
            "gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30 if engine.cuda else 0.0,
            "clips": pace.total, "work_s": time.perf_counter() - pace.t0 if pace.t0 else 0.0,
            "waited_s": pace.waited_s, "frames_by_decoder": dict(source.frames_by_decoder),
            "nvdec": source.nvdec_use(), "first_frames_s": first_frames_s, "main_thread": spent,
            "eager_calls": maker.fallback_calls + engine.eager_batches,
            "eager_why": "; ".join(filter(None, [*maker.fallbacks.values(), engine.fallbacks]))})
