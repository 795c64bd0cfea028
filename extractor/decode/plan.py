"""How a worker decodes: its decoder processes and NVDEC sessions, how long a video must be
to be decoded in segments, chosen from the machine (plan_decoding) or by flags."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .gpu import engines_of, nvdec_available, sessions_for

# At the tail of the queue (fewer videos left per worker than the worker has decoders) a
# video is split into segments this many times shorter, so that a worker's decoders, fast
# NVDEC sessions and slower CPU processes alike, run out of work together rather than
# waiting for whichever took the last whole video.
TAIL_SPLIT = 6


@dataclass(frozen=True)
class DecodeOptions:
    """The decoding flags (RunConfig.decode_options): 0 leaves a number to the machine."""
    decoder: str = "auto"  # auto, cpu, decord or nvdec
    cpu_decoders: int = 0
    nvdec_sessions: int = 0
    nvdec_sms: int = 4
    num_threads: int = 0
    buffer_bytes: int = 48 << 20
    chunk_frames: int = 32
    segment_frames: int = 1500


@dataclass
class DecodePlan:
    """How a worker decodes: chosen from the machine by `plan_decoding`, or by flags."""
    cpu_decoders: int  # decoder processes
    nvdec_sessions: int  # NVDEC sessions (threads of the worker), 0 without NVDEC
    nvdec_sms: int = 0  # SMs the model leaves to NVDEC (gpu.leave_sms_to_nvdec), 0: none
    reader: str = "pyav"  # what the processes decode with: "pyav" or "decord"
    cpu_threads: int = 0  # FFmpeg threads per video; 0: from the load (more when fewer videos are open)
    cpu_budget: int = 1  # cores the worker's decoders share
    buffer_bytes: int = 48 << 20  # shared buffer per decoder process
    chunk_frames: int = 32  # frames per chunk, at most
    prefetch: int = 3  # chunks an NVDEC session may have waiting for the main thread
    cpu_claims: bool = True  # False: the processes decode only what NVDEC declines (--decoder nvdec)
    segment_frames: int = 1500  # videos of twice as many frames or more are decoded in segments (0: never)

    def describe(self) -> str:
        threads = self.cpu_threads or "auto"
        cpu = f"{self.cpu_decoders} CPU decoder processes ({self.reader}, threads {threads})"
        nvdec = f" + {self.nvdec_sessions} NVDEC sessions" if self.nvdec_sessions else ""
        nvdec += f" (the model leaves them {self.nvdec_sms} SMs)" if self.nvdec_sessions and self.nvdec_sms else ""
        split = f", segments of {self.split_frames()} frames ({self.split_frames(tail=True)} at the end of the queue)"
        return cpu + nvdec + (split if self.split_frames() else "")

    def split_frames(self, tail: bool = False) -> int:
        """Segment length asked of the decoder processes (only the PyAV reader seeks), shorter
        for a video claimed at the tail of the queue (TAIL_SPLIT)."""
        if self.reader != "pyav" or not self.segment_frames:
            return 0
        return min(self.segment_frames, max(64, self.segment_frames // TAIL_SPLIT)) if tail else self.segment_frames


def plan_decoding(opts: DecodeOptions, device: torch.device, cpu_budget: int, gpu_name: str = "") -> DecodePlan:
    """How many decoder processes and NVDEC sessions a worker runs, from the machine:
    NVDEC sessions = 3 per 2 decoder engines of the GPU (H100/H200: 7 engines, 10 sessions;
    A100: 5, 7; decode.gpu.NVDEC_ENGINES, SESSIONS_PER_ENGINE), when PyNvVideoCodec is
    installed; processes = the cores of this worker's share of the node minus one (for the
    worker's own thread, which feeds the GPU; decoders run at a lower priority), or half the
    cores beside NVDEC sessions, whose threads need cores too (with 14 sessions on the
    16-core H100 machine, 4 to 10 processes decoded more than 15: OPTIMIZATION_SUMMARY.md,
    2026-11-27). `gpu_name` lets the coordinator plan without CUDA."""
    sessions = 0
    if device.type == "cuda" and opts.decoder in ("auto", "nvdec") and not nvdec_available():
        sessions = opts.nvdec_sessions or sessions_for(engines_of(gpu_name or torch.cuda.get_device_name(device)))
    cores = cpu_budget // 2 if sessions else cpu_budget - 1
    cpu = opts.cpu_decoders or (1 if opts.decoder == "nvdec" else max(1, cores))
    return DecodePlan(cpu_decoders=cpu, nvdec_sessions=sessions, nvdec_sms=opts.nvdec_sms if sessions else 0,
                      reader="decord" if opts.decoder == "decord" else "pyav", cpu_threads=opts.num_threads,
                      cpu_budget=cpu_budget, buffer_bytes=opts.buffer_bytes, chunk_frames=opts.chunk_frames,
                      cpu_claims=not (opts.decoder == "nvdec" and sessions), segment_frames=opts.segment_frames)
