"""Backbones: what the pipeline needs from a model family, and the two it has.

A backbone is opened from `--ckpt_path` before any work (so that a wrong checkpoint stops
the run with one line), says how frames must be preprocessed and how wide its feature rows
are, and builds, on a device, one function: a batch of clips (B, T, 3, H, W) -> features
(B, C). Decoding, clips, batching, precision, compilation, outputs and processes are the
pipeline's and the same for every backbone. A third backbone subclasses `Backbone` and is
added to BACKBONES."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from .checkpoints import CheckpointError, build_from_checkpoint, config_name, read_checkpoint
from .model import temporal_positions

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ClipFunction = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Preprocessing:
    """uint8 RGB frame -> float: /255, bilinear resize to `size` (H, W), then (x - mean) / std."""

    size: tuple[int, int] = (224, 224)
    mean: Optional[tuple] = None  # None: no normalisation (the original LLaVA-ViT script)
    std: Optional[tuple] = None
    antialias: bool = False

    def describe(self) -> str:
        norm = "none" if self.mean is None else f"mean {tuple(round(m, 4) for m in self.mean)} std " \
                                                 f"{tuple(round(s, 4) for s in self.std)}"
        return f"resize {self.size[0]}x{self.size[1]}{' antialiased' if self.antialias else ''}, normalize {norm}"


@dataclass(frozen=True)
class BackboneOptions:
    model_name: Optional[str] = "llava_vit_base_ln"
    model_key: Optional[str] = None
    temporal_positions: Optional[str] = None  # None: the checkpoint format's default
    normalize: Optional[str] = None  # None: the backbone's default; "none" or "clip"
    clip_len: int = 16


class Backbone:
    """Interface. `width`, `preprocessing`, `description` and `note` are known once opened."""

    model_type = ""
    width: int
    preprocessing: Preprocessing
    description: str = ""
    note: str = ""  # a line for the user, e.g. a flag that is ignored
    module: Optional[torch.nn.Module] = None  # the network `build` made (the pipeline compiles its blocks)

    def build(self, device: torch.device, dtype: torch.dtype) -> ClipFunction:
        raise NotImplementedError


def _normalization(name: Optional[str], default: Optional[tuple]) -> tuple:
    if name == "clip":
        return CLIP_MEAN, CLIP_STD
    if name == "none":
        return None, None
    return default if default is not None else (None, None)


class LlavaViTBackbone(Backbone):
    model_type = "llavavit"

    def __init__(self, ckpt_path: Path, opts: BackboneOptions):
        self.ckpt = read_checkpoint(ckpt_path, opts.model_name, opts.model_key)
        cfg = self.ckpt.config
        self.width = cfg.width
        self.rule = opts.temporal_positions or self.ckpt.default_temporal_positions
        self.clip_len = opts.clip_len
        mean, std = _normalization(opts.normalize, None)
        self.preprocessing = Preprocessing((224, 224), mean, std)
        self.description = f"{config_name(cfg)} ({self.ckpt.format}), temporal positions {self.rule}"
        self.note = self.ckpt.note

    def build(self, device: torch.device, dtype: torch.dtype) -> ClipFunction:
        model = self.module = build_from_checkpoint(self.ckpt).to(device=device, dtype=dtype)
        h, w = (s // self.ckpt.config.patch_size for s in self.preprocessing.size)
        cos, sin = model.rope_tables(temporal_positions(self.clip_len, self.rule, device), h, w)

        def clip_features(clips: torch.Tensor) -> torch.Tensor:
            return model.encode(clips.transpose(1, 2), cos, sin)["head_output"]

        return clip_features


class DINOv3Backbone(Backbone):
    """An image model from a local Hugging Face folder, run on every frame of a clip; the
    per-frame feature (pooler output, else the mean of the last hidden state's tokens) is
    averaged over the clip's frames."""

    model_type = "dinov3"

    def __init__(self, ckpt_path: Path, opts: BackboneOptions):
        self.path = ckpt_path
        if not ckpt_path.is_dir() or not (ckpt_path / "config.json").is_file():
            raise CheckpointError(f"{ckpt_path} is not a Hugging Face model folder (no config.json)")
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(str(ckpt_path), local_files_only=True)
        except ImportError:
            raise CheckpointError("--model_type dinov3 needs the 'transformers' package") from None
        except Exception as e:
            raise CheckpointError(f"{ckpt_path}/config.json is not a model config "
                                  f"({str(e).strip().splitlines()[0][:150]})") from None
        self.width = int(getattr(config, "hidden_size", 0))
        if not self.width:
            raise CheckpointError(f"{ckpt_path}: config has no hidden_size")
        self.config_type = config.model_type
        size, mean, std = (224, 224), IMAGENET_MEAN, IMAGENET_STD
        processor = ckpt_path / "preprocessor_config.json"
        source = "defaults (no preprocessor_config.json)"
        if processor.is_file():
            size, mean, std = self._read_processor(processor, size, mean, std)
            source = "preprocessor_config.json"
        mean, std = _normalization(opts.normalize, (mean, std))
        self.preprocessing = Preprocessing(size, mean, std, antialias=True)
        self.description = f"{self.config_type} from {ckpt_path.name} (width {self.width}); preprocessing from {source}"
        notes = []
        if opts.model_name not in (None, "auto", "llava_vit_base_ln"):
            notes.append(f"--model_name {opts.model_name} ignored for --model_type dinov3")
        if opts.temporal_positions:
            notes.append("--temporal_positions ignored for --model_type dinov3 (an image model)")
        self.note = "; ".join(notes)
        self._check_weights()

    @staticmethod
    def _read_processor(path: Path, size, mean, std):
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {path}: {e}") from None
        s = raw.get("size") or {}
        if isinstance(s, dict) and "height" in s and "width" in s:
            size = (int(s["height"]), int(s["width"]))
        elif isinstance(s, dict) and "shortest_edge" in s:
            size = (int(s["shortest_edge"]),) * 2
        elif isinstance(s, int):
            size = (s, s)
        if raw.get("do_normalize", True) is False:
            return size, None, None
        return size, tuple(raw.get("image_mean", mean)), tuple(raw.get("image_std", std))

    def _load(self, dtype: torch.dtype):
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        model, info = AutoModel.from_pretrained(str(self.path), local_files_only=True, trust_remote_code=False,
                                                dtype=dtype, output_loading_info=True)
        return model, info

    def _check_weights(self):
        """from_pretrained fills missing weights with random ones and only logs it: refuse."""
        try:
            _, info = self._load(torch.float32)
        except Exception as e:
            raise CheckpointError(f"{self.path}: cannot load the model ({str(e).strip().splitlines()[0][:200]})") from None
        bad = {k: v for k, v in info.items() if k in ("missing_keys", "mismatched_keys", "unexpected_keys") and v}
        if bad:
            parts = [f"{len(v)} {k.replace('_', ' ')} ({', '.join(map(str, list(v)[:4]))})" for k, v in bad.items()]
            raise CheckpointError(f"{self.path}: weights do not fit the config: " + "; ".join(parts))

    def build(self, device: torch.device, dtype: torch.dtype) -> ClipFunction:
        model, _ = self._load(dtype)
        model = self.module = model.to(device).eval().requires_grad_(False)

        def clip_features(clips: torch.Tensor) -> torch.Tensor:
            B, T = clips.shape[:2]
            out = model(pixel_values=clips.flatten(0, 1))  # every frame of every clip in one call
            pooled = getattr(out, "pooler_output", None)
            frame_features = pooled if pooled is not None else out.last_hidden_state.mean(dim=1)
            return frame_features.view(B, T, -1).mean(dim=1)

        return clip_features


BACKBONES = {"llavavit": LlavaViTBackbone, "dinov3": DINOv3Backbone}


def open_backbone(model_type: str, ckpt_path: Path, opts: BackboneOptions) -> Backbone:
    """Reads and checks the checkpoint; raises CheckpointError with a one-line reason."""
    if model_type not in BACKBONES:
        raise CheckpointError(f"unknown --model_type {model_type!r}; choose from {', '.join(BACKBONES)}")
    if not ckpt_path.exists():
        raise CheckpointError(f"checkpoint not found: {ckpt_path}")
    return BACKBONES[model_type](ckpt_path, opts)
