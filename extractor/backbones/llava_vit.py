"""LLaVA-ViT (OneVision-Encoder): a video encoder run on whole clips, from a backbone.pt
state dict or a OneVision-Encoder Hugging Face folder (extractor/checkpoints.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoints import build_from_checkpoint, config_name, read_checkpoint
from ..model import temporal_positions
from .base import Backbone, BackboneOptions, ClipFunction, Preprocessing, normalization


class LlavaViTBackbone(Backbone):
    model_type = "llavavit"
    pooling = "head_output"

    def __init__(self, ckpt_path: Path, opts: BackboneOptions):
        self.ckpt = read_checkpoint(ckpt_path, opts.model_name, opts.model_key)
        cfg = self.ckpt.config
        self.width = cfg.width
        self.rule = opts.temporal_positions or self.ckpt.default_temporal_positions
        self.clip_len = opts.clip_len
        mean, std = normalization(opts.normalize, None)
        self.preprocessing = Preprocessing((224, 224), mean, std)
        self.description = f"{config_name(cfg)} ({self.ckpt.format}), temporal positions {self.rule}"
        notes = [self.ckpt.note] if self.ckpt.note else []
        if opts.pooling:
            notes.append(f"--pooling {opts.pooling} ignored for --model_type llavavit (its head's output is the feature)")
        self.note = "; ".join(notes)

    def build(self, device: torch.device, dtype: torch.dtype) -> ClipFunction:
        model = self.module = build_from_checkpoint(self.ckpt).to(device=device, dtype=dtype)
        h, w = (s // self.ckpt.config.patch_size for s in self.preprocessing.size)
        cos, sin = model.rope_tables(temporal_positions(self.clip_len, self.rule, device), h, w)

        def clip_features(clips: torch.Tensor) -> torch.Tensor:
            return model.encode(clips.transpose(1, 2), cos, sin)["head_output"]

        return clip_features
