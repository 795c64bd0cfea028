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

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..checkpoints import CheckpointError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ClipFunction = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Preprocessing:
    """uint8 RGB frame -> float: /255, resize of the whole frame to `size` (H, W) with `mode`
    (bilinear or bicubic, align_corners=False), then (x - mean) / std."""

    size: tuple[int, int] = (224, 224)
    mean: Optional[tuple] = None  # None: no normalisation (the original LLaVA-ViT script)
    std: Optional[tuple] = None
    antialias: bool = False
    mode: str = "bilinear"

    def describe(self) -> str:
        norm = "none" if self.mean is None else f"mean {tuple(round(m, 4) for m in self.mean)} std " \
                                                 f"{tuple(round(s, 4) for s in self.std)}"
        how = "" if self.mode == "bilinear" else f" {self.mode}"
        return f"resize {self.size[0]}x{self.size[1]}{how}{' antialiased' if self.antialias else ''}, normalize {norm}"


@dataclass(frozen=True)
class BackboneOptions:
    model_name: Optional[str] = "llava_vit_base_ln"
    model_key: Optional[str] = None
    temporal_positions: Optional[str] = None  # None: the checkpoint format's default
    normalize: Optional[str] = None  # None: the backbone's default; "none" or "clip"
    clip_len: int = 16
    pooling: Optional[str] = None  # hf: None (the family's default), "pooler", "cls" or "mean"


class Backbone:
    """Interface. `width`, `preprocessing`, `description`, `pooling` and `note` are known once opened."""

    model_type = ""
    width: int
    preprocessing: Preprocessing
    description: str = ""
    pooling: str = ""  # how a clip's feature is made of the network's output (recorded in the manifest)
    note: str = ""  # a line for the user, e.g. a flag that is ignored
    module: Optional[torch.nn.Module] = None  # the network `build` made (the pipeline compiles its blocks)
    # An image model's function frames (N, 3, H, W) -> (N, C), set by `build` where the clip's
    # feature is the mean of its frames': the engine then runs each frame of overlapping clips once.
    frame_features: Optional[Callable] = None

    def build(self, device: torch.device, dtype: torch.dtype) -> ClipFunction:
        raise NotImplementedError


def normalization(name: Optional[str], default: Optional[tuple]) -> tuple:
    """--normalize: 'clip' or 'none' override the backbone's (mean, std) `default`."""
    if name == "clip":
        return CLIP_MEAN, CLIP_STD
    if name == "none":
        return None, None
    return default if default is not None else (None, None)


# The families import the names above.
from .hf import DINOv3Backbone, HFBackbone  # noqa: E402
from .llava_vit import LlavaViTBackbone  # noqa: E402

BACKBONES = {"llavavit": LlavaViTBackbone, "hf": HFBackbone, "dinov3": DINOv3Backbone}


def open_backbone(model_type: str, ckpt_path: Path, opts: BackboneOptions) -> Backbone:
    """Reads and checks the checkpoint; raises CheckpointError with a one-line reason."""
    if model_type not in BACKBONES:
        raise CheckpointError(f"unknown --model_type {model_type!r}; choose from {', '.join(BACKBONES)}")
    if not ckpt_path.exists():
        raise CheckpointError(f"checkpoint not found: {ckpt_path}")
    return BACKBONES[model_type](ckpt_path, opts)
