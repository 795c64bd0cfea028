"""The backbone interface: what the pipeline needs from a model family (`Backbone`), how
its frames are preprocessed (`Preprocessing`) and the options it is opened with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

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
