"""Backbones: what the pipeline needs from a model family, and the families it has.

A backbone is opened from `--ckpt_path` before any work (so that a wrong checkpoint stops
the run with one line), says how frames must be preprocessed and how wide its feature rows
are, and builds, on a device, one function: a batch of clips (B, T, 3, H, W) -> features
(B, C). Decoding, clips, batching, precision, compilation, outputs and processes are the
pipeline's and the same for every backbone.

  llavavit  LLaVA-ViT / OneVision-Encoder video encoder (llava_vit.py)
  hf        a local Hugging Face transformers folder; the family comes from its config.json
            (hf.py: CLIP, MetaCLIP 2, SigLIP, DINOv2, DINOv3, AIMv2 per frame; VideoMAE, V-JEPA 2 per clip)
  dinov3    the hf path, for DINOv3 folders only (the flag this project had first)

Another backbone subclasses `Backbone` and is added to BACKBONES."""

from __future__ import annotations

from pathlib import Path

from ..checkpoints import CheckpointError
from .base import CLIP_MEAN, CLIP_STD, Backbone, BackboneOptions, Preprocessing
from .hf import DINOv3Backbone, HFBackbone
from .llava_vit import LlavaViTBackbone

__all__ = ["BACKBONES", "CLIP_MEAN", "CLIP_STD", "Backbone", "BackboneOptions", "Preprocessing", "open_backbone"]

BACKBONES = {"llavavit": LlavaViTBackbone, "hf": HFBackbone, "dinov3": DINOv3Backbone}


def open_backbone(model_type: str, ckpt_path: Path, opts: BackboneOptions) -> Backbone:
    """Reads and checks the checkpoint; raises CheckpointError with a one-line reason."""
    if model_type not in BACKBONES:
        raise CheckpointError(f"unknown --model_type {model_type!r}; choose from {', '.join(BACKBONES)}")
    if not ckpt_path.exists():
        raise CheckpointError(f"checkpoint not found: {ckpt_path}")
    return BACKBONES[model_type](ckpt_path, opts)
