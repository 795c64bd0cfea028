"""Reading checkpoints into a LlavaViT, strictly.

Two formats: the original `backbone.pt` state dict (torch.save or .safetensors; possibly
wrapped in {"model"|"state_dict"|"module": ...} and prefixed `module.` / `_orig_mod.`), and
a Hugging Face OneVision-Encoder folder (config.json + *.safetensors), read without
network access and without running any code from the folder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch

from .model import VARIANTS, LlavaViT, ViTConfig

WRAPPER_KEYS = ("model", "state_dict", "module")
PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(Exception):
    """The checkpoint cannot be used; the message says why in one line."""


@dataclass
class LoadedCheckpoint:
    config: ViTConfig
    state_dict: dict
    format: str  # "backbone" or "hf"
    default_temporal_positions: str
    note: str = ""  # a line for the user (e.g. --model_name ignored)


def file_digest(path: Path) -> str:
    """sha256 of a file (or of all the files of a folder, in name order), hex, first 16 digits."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _read_tensor_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"cannot read safetensors file {path}: {str(e).splitlines()[0]}") from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
        pass
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {str(e).strip().splitlines()[0]}") from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {str(e).strip().splitlines()[0]}") from None


def unwrap_state_dict(obj, model_key: Optional[str]) -> dict:
    if model_key:
        if not isinstance(obj, dict) or model_key not in obj:
            have = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(f"--model_key {model_key!r} not in checkpoint (top-level keys: {have})")
        obj = obj[model_key]
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = [k for k in WRAPPER_KEYS if k in obj]
        if not inner:
            raise CheckpointError(f"checkpoint holds no tensors at its top level and none of {WRAPPER_KEYS} "
                                  f"(keys: {list(obj)[:8]}); name the right one with --model_key")
        obj = obj[inner[0]]
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint is a {type(obj).__name__}, not a state dict")
    out = {}
    for key, value in obj.items():
        changed = True
        while changed:
            changed = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def infer_config(sd: dict) -> ViTConfig:
    """Architecture read off a backbone.pt state dict's shapes (head_dim 64, as every variant)."""
    try:
        width, _, patch, _ = sd["conv1.weight"].shape
        layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.layers."))
        mlp = sd["transformer.layers.0.mlp.0.weight"].shape[0]
    except (KeyError, ValueError, IndexError):
        raise CheckpointError("not a LLaVA-ViT state dict (no conv1.weight / transformer.layers.* / mlp keys)") from None
    norm = "layer_norm" if "ln_pre.bias" in sd else "rms_norm"
    return ViTConfig(patch_size=patch, width=width, layers=layers, head_dim=64, mlp_width=mlp, norm=norm)


def config_name(cfg: ViTConfig) -> str:
    for name, v in VARIANTS.items():
        if replace(v, norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta) == cfg:
            return name
    return f"custom(patch {cfg.patch_size}, width {cfg.width}, {cfg.layers} layers, mlp {cfg.mlp_width}, {cfg.norm})"


def hf_config(folder: Path) -> ViTConfig:
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {folder / 'config.json'}: {e}") from None
    if raw.get("model_type") != "onevision_encoder":
        raise CheckpointError(f"{folder} has config.json with model_type {raw.get('model_type')!r}, "
                              "not 'onevision_encoder'")
    if raw.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"hidden_act {raw['hidden_act']!r} is not supported (only exact gelu)")
    if not raw.get("use_head", True):
        raise CheckpointError("use_head is false: the extractor's features are the pooling head's output")
    try:
        width, heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
        return ViTConfig(
            patch_size=int(raw["patch_size"]), width=width, layers=int(raw["num_hidden_layers"]),
            head_dim=width // heads, mlp_width=int(raw["intermediate_size"]),
            norm=raw.get("layer_norm_type", "layer_norm"), norm_eps=float(raw.get("layer_norm_eps", 1e-6)),
            rope_theta=float(raw.get("rope_theta", 10000.0)))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"config.json lacks or mangles field {e}") from None


def rename_hf(sd: dict, layers: int) -> dict:
    """HF OneVision-Encoder names -> llava_vit names; q, k, v stacked into in_proj."""
    out, sd = {}, dict(sd)
    simple = {"embeddings.patch_embedding.weight": "conv1.weight"}
    for key in list(sd):
        if key in simple:
            out[simple[key]] = sd.pop(key)
        elif key.startswith("layernorm_pre."):
            out["ln_pre." + key.split(".", 1)[1]] = sd.pop(key)
        elif key.startswith("layernorm_post."):
            out["ln_post." + key.split(".", 1)[1]] = sd.pop(key)
        elif key.startswith("head."):
            out[key] = sd.pop(key)
    for i in range(layers):
        src, dst = f"encoder.layers.{i}.", f"transformer.layers.{i}."
        for part in ("weight", "bias"):
            qkv = [sd.pop(f"{src}self_attn.{p}_proj.{part}", None) for p in "qkv"]
            if all(t is not None for t in qkv):
                out[f"{dst}attn.in_proj.{part}"] = torch.cat(qkv, dim=0)
        renames = {"layer_norm1.": "ln_1.", "layer_norm2.": "ln_2.", "self_attn.out_proj.": "attn.out_proj.",
                   "mlp.fc1.": "mlp.0.", "mlp.fc2.": "mlp.2."}
        for key in [k for k in sd if k.startswith(src)]:
            rest = key[len(src):]
            for a, b in renames.items():
                if rest.startswith(a):
                    out[dst + b + rest[len(a):]] = sd.pop(key)
                    break
    out.update(sd)  # whatever is left shows up as unexpected keys
    return out


def read_checkpoint(path: Path, model_name: Optional[str], model_key: Optional[str] = None) -> LoadedCheckpoint:
    """Reads and checks a checkpoint without building the model on a device."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        cfg = hf_config(path)
        weights = sorted(path.glob("*.safetensors"))
        if not weights:
            raise CheckpointError(f"{path} has config.json but no *.safetensors weights")
        sd = {}
        for f in weights:
            sd.update(_read_tensor_file(f))
        sd = rename_hf(sd, cfg.layers)
        note = ""
        if model_name and model_name != "auto":
            note = f"--model_name {model_name} ignored: the architecture comes from {path / 'config.json'}"
        ckpt = LoadedCheckpoint(cfg, sd, "hf", "spread64", note)
    else:
        sd = unwrap_state_dict(_read_tensor_file(path), model_key)
        if model_name in (None, "auto"):
            cfg = infer_config(sd)
        elif model_name in VARIANTS:
            cfg = VARIANTS[model_name]
        else:
            raise CheckpointError(f"unknown --model_name {model_name!r}; choose from {', '.join(VARIANTS)} or auto")
        ckpt = LoadedCheckpoint(cfg, sd, "backbone", "contiguous")
    try:
        check_fits(ckpt)
    except CheckpointError as e:
        hint = ""
        if ckpt.format == "backbone" and model_name in VARIANTS:
            try:
                hint = f" (the checkpoint looks like {config_name(infer_config(sd))})"
            except CheckpointError:
                pass
        raise CheckpointError(f"{path}: {e}{hint}") from None
    return ckpt


def expected_shapes(cfg: ViTConfig) -> dict:
    with torch.device("meta"):
        model = LlavaViT(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_fits(ckpt: LoadedCheckpoint) -> None:
    want = expected_shapes(ckpt.config)
    have = {k: tuple(v.shape) for k, v in ckpt.state_dict.items()}
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    mismatched = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            parts.append(f"{len(keys)} {label} keys ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})")
    if mismatched:
        shown = ", ".join(f"{k} {have[k]} vs {want[k]}" for k in mismatched[:3])
        parts.append(f"{len(mismatched)} shape mismatches ({shown}{', ...' if len(mismatched) > 3 else ''})")
    raise CheckpointError(f"checkpoint does not fit {config_name(ckpt.config)}: " + "; ".join(parts))


def build_from_checkpoint(ckpt: LoadedCheckpoint) -> LlavaViT:
    """The model holding the checkpoint's tensors themselves (built on the meta device: no
    random initialisation to overwrite, a second or more of a worker's start-up)."""
    with torch.device("meta"):
        model = LlavaViT(ckpt.config)
    model.load_state_dict(ckpt.state_dict, strict=True, assign=True)
    return model.eval().requires_grad_(False)
