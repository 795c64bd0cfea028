"""Decoding alone, with the pipeline's own decoders: frames per second of a worker's frame
source (decoder processes, NVDEC sessions, or both) over a corpus, every chunk dropped as
soon as it arrives (CPU: its buffer space given back; NVDEC: the decoded surfaces viewed
as one batch, not converted). This is the ceiling that decoding puts on a run: the
pipeline cannot decode faster while it also feeds the model."""

from __future__ import annotations

import queue
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from extractor.decode.plan import DecodePlan  # noqa: E402
from extractor.decode.source import FrameSource  # noqa: E402
from extractor.decode.job import DecodeJob  # noqa: E402


class SurfacesOnly:
    """Stands in for the InputMaker: NVDEC batches are returned as they are (decode only)."""

    def from_nv12(self, batch, info):
        return batch


def modelless_source(videos: list[Path], plan: DecodePlan, clip_len: int, stride: int, device: torch.device,
                     maker=None) -> FrameSource:
    """A worker's frame source claiming `videos` in order, with no model behind it (nor tail
    splitting). Nothing runs its clips off as a worker's model does (pipeline.ClaimPace), so
    its budget on clips held is lifted: it would stop the claims for good after START_CLIPS
    clips' worth of videos (on the H100 the ceilings stopped after about 17 of 96 videos)."""
    todo, lock = list(videos), threading.Lock()

    def claim():
        with lock:
            return (todo.pop(0), None, None) if todo else None

    source = FrameSource(plan, clip_len, stride, 600.0, claim, lambda ev: None, DecodeJob, device,
                         maker or SurfacesOnly())
    source.clip_budget = float("inf")
    return source


def decode_only(videos: list[Path], plan: DecodePlan, stride: int, device: torch.device, clip_len: int = 16,
                maker=None, seconds: float = 0.0, stall_s: float = 60.0) -> dict:
    """With `maker` (an InputMaker), every chunk is also made model input as the worker makes
    it (CPU chunks: copy to the GPU, colour conversion and resize on this thread; NVDEC
    batches: the same conversion on the session's stream), then dropped: the pipeline less
    the model and the clips. `seconds`: stop that long after the first frame arrived (0: at
    the end of the corpus), so that six ceilings of a large corpus fit one device call; the
    rate is then that of the window, the decoders' start-up left out. A source that sends
    nothing for `stall_s` ends the ceiling, recorded as failed (it never hangs the bench)."""
    if maker is not None and device.type == "cuda":
        maker.warm_up()  # compiled before the clock starts

    t0 = time.perf_counter()
    source = modelless_source(videos, plan, clip_len, stride, device, maker)
    source.start_sessions()
    frames, failed, decoders, t_first, capped = 0, {}, {}, 0.0, False
    windowed = 0  # frames after the first chunk: the window's
    try:
        while True:
            try:
                event = source.queue.get(timeout=stall_s)
            except queue.Empty:
                failed["source"] = f"nothing from the frame source for {stall_s:.0f} s"
                break
            kind = event[0]
            if kind == "exit":
                break
            if kind == "frames":
                if maker is None:
                    event[3].discard()
                else:
                    with torch.inference_mode():
                        event[3].to_input(maker)
                frames += len(event[2])
                if not t_first:  # the window opens as the first chunk arrives (it is not counted in it)
                    t_first = time.perf_counter()
                else:
                    windowed += len(event[2])
                if seconds and windowed and time.perf_counter() - t_first >= seconds:
                    capped = True
                    break
            elif kind == "decoded":
                decoders[event[1].decoder] = decoders.get(event[1].decoder, 0) + 1
            elif kind == "fail":
                failed[event[1].path.name] = event[2]
            elif kind == "fatal":
                failed["source"] = event[2]
                break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        t_end = time.perf_counter()
        source.close()
    # capped: the window's frames over its length; else every frame over the whole run
    frames, wall = (windowed, t_end - t_first) if capped else (frames, t_end - t0)
    return {"plan": plan.describe(), "videos": len(videos), "frames": frames, "wall_s": round(wall, 2),
            "frames_per_s": round(frames / wall, 1), "clips_per_s": round(frames / wall / min(stride, clip_len), 1),
            "videos_by_decoder": decoders, "failed": failed, "capped_s": seconds if capped else 0.0}
