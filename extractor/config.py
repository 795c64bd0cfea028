"""A run's configuration, as the command line made it: what every process of the run is
given. It sits below the pipeline and the decoders, which read their parts of it
(`backbone_options`, `decode_options`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .backbones import BackboneOptions
from .datasets import feature_relpath, video_name
from .decode.plan import DecodeOptions

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class RunConfig:
    save_path: Path
    ckpt_path: Path
    model_type: str = "llavavit"
    model_name: Optional[str] = "llava_vit_base_ln"
    model_key: Optional[str] = None
    device: str = "cpu"
    clip_len: int = 16
    stride: int = 4
    batch_clips: int = 64
    dtype: str = "fp32"
    compile: bool = False
    # "auto": CPU decoder processes (FFmpeg through PyAV) and, on a GPU with PyNvVideoCodec,
    # NVDEC sessions, side by side; "cpu": the processes only; "decord": processes reading
    # with decord; "nvdec": NVDEC for every video it can take, one process for the rest.
    decoder: str = "auto"
    cpu_decoders: int = 0  # decoder processes per worker; 0: from the cores (see plan_decoding)
    nvdec_sessions: int = 0  # NVDEC sessions per worker; 0: from the GPU's decoder engines
    nvdec_sms: int = 4  # SMs the model leaves to NVDEC while NVDEC sessions run (decode.gpu.leave_sms_to_nvdec)
    num_threads: int = 0  # FFmpeg threads per video; 0: from the load
    decode_buffer_bytes: int = 48 << 20  # shared buffer per decoder process
    chunk_frames: int = 32  # frames per decoded chunk, at most
    segment_frames: int = 1500  # a video of twice as many frames or more is decoded in segments (0: never)
    normalize: Optional[str] = None  # None: the backbone's default
    pooling: Optional[str] = None  # hf backbones: None (the family's default), "pooler", "cls" or "mean"
    preprocessing: Optional[object] = None  # the backbone's (backbones.Preprocessing), where known before it opens
    verbose: bool = False  # other libraries' own warnings reach the terminal (--verbose)
    temporal_positions: Optional[str] = None  # None: the checkpoint format's default
    prefix: str = ""
    suffix: str = ""
    ext: str = "npy"
    lost_after_s: float = 120.0  # several processes: a process silent this long is lost
    decode_timeout_s: float = 600.0  # a video whose decoding makes no progress this long is hung
    data_path: Optional[Path] = None  # the videos' names are relative to it (extractor/datasets.py)

    def backbone_options(self) -> BackboneOptions:
        return BackboneOptions(self.model_name, self.model_key, self.temporal_positions, self.normalize, self.clip_len,
                               self.pooling)

    def decode_options(self) -> DecodeOptions:
        return DecodeOptions(self.decoder, self.cpu_decoders, self.nvdec_sessions, self.nvdec_sms, self.num_threads,
                             self.decode_buffer_bytes, self.chunk_frames, self.segment_frames)

    def video_name(self, video: Path) -> str:
        """The name a video goes by in events and records (not its file name: videos in
        different folders may share one)."""
        return video_name(video, self.data_path)

    def output_path(self, video: Path) -> Path:
        return self.save_path / feature_relpath(self.video_name(video), self.prefix, self.suffix, self.ext)
