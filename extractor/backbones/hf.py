"""Hugging Face backbones: a local transformers folder, its family read off config.json.

Image models run on every frame of a clip (all frames of all clips of a batch in one call)
and their per-frame features are averaged over the clip; video models take the whole clip
(B, T, 3, H, W) at once. A folder holding a two-tower model (CLIP, SigLIP, AIMv2 with their
text tower) runs its vision tower: the whole model is loaded, its vision tower kept, and only
the tower's weights are checked.

Pooling (--pooling; default: pooler where the model has one, else mean):
  pooler  the model's own pooled output (CLIP, MetaCLIP: post-layernorm class token; SigLIP,
          AIMv2: attention-pooling head; DINOv2, DINOv3: layernormed class token)
  cls     token 0 of the last hidden state (models with a class token only)
  mean    mean of the last hidden state over the patch tokens only: the class token and
          register tokens (DINOv3, DINOv2 with registers) are left out

Preprocessing comes from the folder's preprocessor_config.json (video models:
video_preprocessor_config.json first): the input size (crop_size where the processor crops,
else size), resampling (bilinear or bicubic) and mean/std; --normalize overrides mean/std.
The pipeline resizes the whole frame to that size (antialiased, as PIL does): no center crop,
so frames of another aspect ratio are squeezed. Without a processor config: the config's image
size, bilinear, and --normalize (default none)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..checkpoints import CheckpointError
from ..decode.common import first_line
from .base import IMAGENET_MEAN, IMAGENET_STD, Backbone, BackboneOptions, ClipFunction, Preprocessing, normalization

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL's codes, as processor configs write them


def _registers(config) -> int:
    return int(getattr(config, "num_register_tokens", 0) or 0)


@dataclass(frozen=True)
class Family:
    name: str
    model_class: str  # the transformers class from_pretrained loads
    tower: str  # the attribute of the loaded model that runs ("": the model itself)
    per_clip: bool  # a video model (whole clips) or an image model (frame by frame)
    prefix_tokens: Callable  # vision config -> tokens before the patch tokens (class, registers)
    has_pooler: Callable  # vision config -> whether the model gives a pooled output
    size: Callable  # vision config -> the input size the model was made for
    any_size: bool = False  # positions for any input size (RoPE, interpolated): a processor size may differ
    frames: Optional[Callable] = None  # video models: config -> the frames of a clip it takes
    any_frames: bool = False  # video models: clips of other lengths (multiples of the tubelet) too
    input_name: str = "pixel_values"


def _image_size(config):
    return config.image_size


CLIP = dict(per_clip=False, prefix_tokens=lambda c: 1, has_pooler=lambda c: True, size=_image_size)
SIGLIP = dict(per_clip=False, prefix_tokens=lambda c: 0, has_pooler=lambda c: getattr(c, "vision_use_head", True),
              size=_image_size)
AIMV2 = dict(per_clip=False, prefix_tokens=lambda c: 0, has_pooler=lambda c: getattr(c, "use_head", True),
             size=_image_size)
DINO = dict(per_clip=False, prefix_tokens=lambda c: 1 + _registers(c), has_pooler=lambda c: True, size=_image_size,
            any_size=True)

FAMILIES = {  # config.json model_type -> Family
    "clip": Family("CLIP", "CLIPModel", "vision_model", **CLIP),
    "clip_vision_model": Family("CLIP", "CLIPVisionModel", "", **CLIP),
    "metaclip_2": Family("MetaCLIP 2", "MetaClip2Model", "vision_model", **CLIP),
    "metaclip_2_vision_model": Family("MetaCLIP 2", "MetaClip2VisionModel", "", **CLIP),
    "siglip": Family("SigLIP", "SiglipModel", "vision_model", **SIGLIP),
    "siglip_vision_model": Family("SigLIP", "SiglipVisionModel", "", **SIGLIP),
    "aimv2": Family("AIMv2", "Aimv2Model", "vision_model", **AIMV2),
    "aimv2_vision_model": Family("AIMv2", "Aimv2VisionModel", "", **AIMV2),
    "dinov2": Family("DINOv2", "Dinov2Model", "", **DINO),
    "dinov2_with_registers": Family("DINOv2 with registers", "Dinov2WithRegistersModel", "", **DINO),
    "dinov3_vit": Family("DINOv3", "DINOv3ViTModel", "", **DINO),
    "videomae": Family("VideoMAE", "VideoMAEModel", "", per_clip=True, prefix_tokens=lambda c: 0,
                       has_pooler=lambda c: False, size=_image_size, frames=lambda c: c.num_frames),
    # the encoder alone: the predictor is neither loaded on the device nor run
    "vjepa2": Family("V-JEPA 2", "VJEPA2Model", "encoder", per_clip=True, prefix_tokens=lambda c: 0,
                     has_pooler=lambda c: False, size=lambda c: c.crop_size, frames=lambda c: c.frames_per_clip,
                     any_frames=True, input_name="pixel_values_videos"),
}

REFUSED = {  # model types that look close but do not run here
    "siglip2": "a SigLIP 2 NaFlex model (variable-resolution patch sequences) is not supported; the fixed-resolution "
               "SigLIP 2 checkpoints (config model_type 'siglip') are",
    "dinov3_convnext": "DINOv3 ConvNeXt is not supported (a convolutional network); the DINOv3 ViTs are",
}


@contextmanager
def _quiet_transformers():
    """transformers' own warnings and load report off the terminal: the run says what matters
    in one line (the load report lists the other tower's weights as unexpected)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _pair(size) -> tuple[int, int]:
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[-1])
    return int(size), int(size)


def _processor_size(value) -> Optional[tuple[int, int]]:
    """A processor config's size or crop_size: {"height", "width"}, {"shortest_edge"} or an int."""
    if isinstance(value, dict) and "height" in value and "width" in value:
        return int(value["height"]), int(value["width"])
    if isinstance(value, dict) and "shortest_edge" in value:
        return (int(value["shortest_edge"]),) * 2
    if isinstance(value, int):
        return value, value
    return None


def read_processor(path: Path) -> dict:
    """{'size', 'mode', 'mean', 'std', 'how'} from a (video) processor config; missing keys left out."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {first_line(e)}") from None
    out, how = {}, []
    crop = _processor_size(raw.get("crop_size")) if raw.get("do_center_crop", "crop_size" in raw) else None
    size = _processor_size(raw.get("size"))
    if crop:
        out["size"] = crop
        how.append(f"its crop size {crop[0]}x{crop[1]} (the processor resizes to {raw.get('size')} and crops; here the "
                   "whole frame is resized, no crop)")
    elif size:
        out["size"] = size
    resample = raw.get("resample")
    if resample is not None:
        out["mode"] = RESAMPLE.get(resample, "bilinear")
        if resample not in RESAMPLE:
            how.append(f"resample {resample} done as bilinear")
    if raw.get("do_normalize", True) is False:
        out["mean"] = out["std"] = None
    elif "image_mean" in raw and "image_std" in raw:
        out["mean"], out["std"] = tuple(raw["image_mean"]), tuple(raw["image_std"])
    out["how"] = "; ".join(how)
    return out


class HFBackbone(Backbone):
    """Any supported local transformers folder (FAMILIES)."""

    model_type = "hf"
    fallback_size: Optional[tuple] = None  # without a processor config: None (the config's size)
    fallback_norm: tuple = (None, None)  # and this mean/std unless --normalize says

    def __init__(self, ckpt_path: Path, opts: BackboneOptions):
        self.path = ckpt_path
        config = self._read_config(ckpt_path)
        self.config_type = config.model_type
        if self.config_type not in FAMILIES:  # (config.json said one of them)
            raise CheckpointError(f"{ckpt_path}: config.json's model_type reads as {self.config_type!r}")
        self._check_type()
        family = self.family = FAMILIES[self.config_type]
        vision = self.vision_config = config.vision_config if family.tower == "vision_model" else config
        if not any((ckpt_path / name).is_file() for name in WEIGHT_FILES):
            raise CheckpointError(f"{ckpt_path}: no weights ({' or '.join(WEIGHT_FILES[::2])})")
        self.width = int(vision.hidden_size)
        self.prefix_tokens = family.prefix_tokens(vision)
        self.pooling = self._pooling(opts.pooling)
        self.preprocessing, source = self._preprocessing(opts.normalize)
        if not family.any_size and self.preprocessing.size != _pair(family.size(vision)):
            raise CheckpointError(f"{ckpt_path}: the processor's size {self.preprocessing.size} is not the model's "
                                  f"{_pair(family.size(vision))} (its position embeddings are fixed)")
        self.frames = self._frames(opts.clip_len)
        self.description = (f"{family.name} ({self.config_type}{', vision tower' if family.tower == 'vision_model' else ''})"
                            f" from {ckpt_path.name}, width {self.width}, "
                            f"{'whole clips of ' + str(opts.clip_len) + ' frames' if family.per_clip else 'per frame, averaged over the clip'}"
                            f", pooling {self.pooling}; preprocessing from {source}")
        self.note = self._notes(opts)
        self.loaded = self._load(torch.float32)  # checks the weights now; build reuses it in this process

    @staticmethod
    def _read_config(path: Path):
        if not path.is_dir() or not (path / "config.json").is_file():
            raise CheckpointError(f"{path} is not a Hugging Face model folder (no config.json)")
        try:
            from transformers import AutoConfig
        except ImportError:
            raise CheckpointError("Hugging Face folders need the 'transformers' package") from None
        try:
            raw = json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}/config.json is not JSON ({first_line(e, 150)})") from None
        kind = raw.get("model_type") if isinstance(raw, dict) else None
        if kind in REFUSED:
            raise CheckpointError(f"{path}: {REFUSED[kind]}")
        if kind not in FAMILIES:
            raise CheckpointError(f"{path}: model_type {kind!r} is not a backbone this project runs; "
                                  f"supported: {', '.join(sorted(FAMILIES))}")
        try:
            with _quiet_transformers():
                return AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        except Exception as e:
            raise CheckpointError(f"{path}/config.json is not a model config this transformers reads "
                                  f"({first_line(e, 150)})") from None

    def _check_type(self):
        """A subclass may accept fewer families."""

    def _pooling(self, asked: Optional[str]) -> str:
        has_pooler = self.family.has_pooler(self.vision_config)
        pooling = asked or ("pooler" if has_pooler else "mean")
        if pooling == "pooler" and not has_pooler:
            raise CheckpointError(f"{self.path}: this {self.family.name} model has no pooled output; use --pooling mean"
                                  f"{' or cls' if self.prefix_tokens else ''}")
        if pooling == "cls" and not self.prefix_tokens:
            raise CheckpointError(f"{self.path}: {self.family.name} has no class token; use --pooling mean"
                                  f"{' or pooler' if has_pooler else ''}")
        if pooling not in ("pooler", "cls", "mean"):
            raise CheckpointError(f"unknown --pooling {pooling!r}")
        return pooling

    def _preprocessing(self, normalize: Optional[str]) -> tuple[Preprocessing, str]:
        names = ("video_preprocessor_config.json", "preprocessor_config.json") if self.family.per_clip \
            else ("preprocessor_config.json",)
        found = next((self.path / n for n in names if (self.path / n).is_file()), None)
        size = self.fallback_size or _pair(self.family.size(self.vision_config))
        mode, mean, std, source = "bilinear", *self.fallback_norm, "the model config (no processor config)"
        if found is not None:
            got = read_processor(found)
            size, mode = got.get("size", size), got.get("mode", mode)
            mean, std = got.get("mean", mean), got.get("std", std)
            source = found.name + (f": {got['how']}" if got["how"] else "")
        mean, std = normalization(normalize, (mean, std))
        if normalize:
            source += f"; --normalize {normalize}"
        return Preprocessing(size, mean, std, antialias=True, mode=mode), source

    def _frames(self, clip_len: int) -> Optional[int]:
        family, config = self.family, self.vision_config
        if not family.per_clip:
            return None
        frames, tubelet = int(family.frames(config)), int(getattr(config, "tubelet_size", 1))
        if family.any_frames:
            if clip_len % tubelet:
                raise CheckpointError(f"{self.path}: {family.name} takes clips of a multiple of {tubelet} frames "
                                      f"(its tubelet); --clip_len is {clip_len}")
        elif clip_len != frames:
            raise CheckpointError(f"{self.path}: {family.name} takes clips of {frames} frames (its config); "
                                  f"--clip_len is {clip_len}: give --clip_len {frames}")
        return frames

    def _notes(self, opts: BackboneOptions) -> str:
        notes = []
        if opts.model_name not in (None, "auto", "llava_vit_base_ln"):
            notes.append(f"--model_name {opts.model_name} ignored for a Hugging Face folder")
        if opts.temporal_positions:
            notes.append(f"--temporal_positions ignored for {self.family.name}")
        if self.family.any_frames and self.frames != opts.clip_len:
            notes.append(f"{self.family.name} was made for clips of {self.frames} frames; it runs clips of "
                         f"{opts.clip_len} (its positions are rotary)")
        return "; ".join(notes)

    def _load(self, dtype: torch.dtype) -> torch.nn.Module:
        """The part of the model that runs (family.tower), in eval mode. Refuses weights that
        do not fit the config, counting only that part: from_pretrained fills missing weights
        with random ones and only logs it. Weights of other parts (text tower, heads, the
        pre-training decoder or predictor) are not used."""
        import transformers

        model_class = getattr(transformers, self.family.model_class, None)
        if model_class is None:
            raise CheckpointError(f"{self.family.name} needs transformers with {self.family.model_class} "
                                  f"(this one is {transformers.__version__})")
        try:
            with _quiet_transformers():  # (its load report lists the other tower's weights: ours is below)
                model, info = model_class.from_pretrained(str(self.path), local_files_only=True,
                                                          trust_remote_code=False, dtype=dtype, output_loading_info=True)
        except Exception as e:
            raise CheckpointError(f"{self.path}: cannot load the model ({first_line(e)})") from None
        tower = getattr(model, self.family.tower) if self.family.tower else model
        prefix = self.family.tower + "." if self.family.tower else ""
        own = {name.split(".")[0] for name in tower.state_dict()}  # the tower's top-level parts

        def ours(key: str) -> bool:
            return key.startswith(prefix) and key[len(prefix):].split(".")[0] in own

        bad = {kind: [k[0] if isinstance(k, tuple) else k for k in info.get(kind) or ()]
               for kind in ("missing_keys", "mismatched_keys", "unexpected_keys")}
        bad = {kind: sorted(k for k in keys if ours(k)) for kind, keys in bad.items()}
        bad = {kind: keys for kind, keys in bad.items() if keys}
        if bad:
            parts = [f"{len(v)} {k.replace('_', ' ')} ({', '.join(v[:4])})" for k, v in bad.items()]
            raise CheckpointError(f"{self.path}: weights do not fit the config: " + "; ".join(parts))
        return tower.eval().requires_grad_(False)

    def build(self, device: torch.device, dtype: torch.dtype) -> ClipFunction:
        tower, self.loaded = self.loaded, None
        if tower is None:  # (built once already)
            tower = self._load(dtype)
        model = self.module = tower.to(device=device, dtype=dtype)
        per_clip, input_name, pooling, skip = self.family.per_clip, self.family.input_name, self.pooling, self.prefix_tokens

        def pool(out) -> torch.Tensor:
            if pooling == "pooler":
                return out.pooler_output
            if pooling == "cls":
                return out.last_hidden_state[:, 0]
            return out.last_hidden_state[:, skip:].mean(dim=1)

        def frame_features(frames: torch.Tensor) -> torch.Tensor:
            """(N, 3, H, W) -> (N, C) float32: an image model's feature of each frame."""
            return pool(model(**{input_name: frames})).float()

        def clip_features(clips: torch.Tensor) -> torch.Tensor:
            if per_clip:  # (B, T, 3, H, W), as VideoMAE and V-JEPA 2 take it
                return pool(model(**{input_name: clips}))
            B, T = clips.shape[:2]
            return frame_features(clips.flatten(0, 1)).view(B, T, -1).mean(dim=1)  # every frame in one call

        self.frame_features = None if per_clip else frame_features
        return clip_features


class DINOv3Backbone(HFBackbone):
    """--model_type dinov3: the hf path for DINOv3 folders, with the defaults it had before
    the hf path (224 x 224 and ImageNet mean/std without a processor config)."""

    model_type = "dinov3"
    fallback_size = (224, 224)
    fallback_norm = (IMAGENET_MEAN, IMAGENET_STD)

    def _check_type(self):
        if self.config_type != "dinov3_vit":
            raise CheckpointError(f"{self.path}: a {self.config_type!r} folder, not DINOv3; use --model_type hf")
