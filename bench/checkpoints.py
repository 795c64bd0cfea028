"""Random-weights checkpoints for benchmarks: a backbone.pt of any variant, and a
OneVision-Encoder Hugging Face folder (config.json + model.safetensors) of any size."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from extractor.model import VARIANTS, LlavaViT, ViTConfig  # noqa: E402


def random_backbone(path: Path, variant: str, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(LlavaViT(VARIANTS[variant]).state_dict(), path)
    return path


def to_hf_names(sd: dict, layers: int) -> dict:
    out = {}
    for key, value in sd.items():
        if key == "conv1.weight":
            out["embeddings.patch_embedding.weight"] = value
        elif key.startswith("ln_pre."):
            out["layernorm_pre." + key[7:]] = value
        elif key.startswith("ln_post."):
            out["layernorm_post." + key[8:]] = value
        elif key.startswith("head."):
            out[key] = value
    for i in range(layers):
        src, dst = f"transformer.layers.{i}.", f"encoder.layers.{i}."
        for part in ("weight", "bias"):
            for name, t in zip("qkv", sd[f"{src}attn.in_proj.{part}"].chunk(3)):
                out[f"{dst}self_attn.{name}_proj.{part}"] = t.clone()
        for a, b in {"ln_1.": "layer_norm1.", "ln_2.": "layer_norm2.", "attn.out_proj.": "self_attn.out_proj.",
                     "mlp.0.": "mlp.fc1.", "mlp.2.": "mlp.fc2."}.items():
            for key in [k for k in sd if k.startswith(src + a)]:
                out[dst + b + key[len(src + a):]] = sd[key]
    return {k: v.contiguous() for k, v in out.items()}


def random_hf_folder(folder: Path, width=1024, layers=24, heads=16, mlp=4096, patch=14, seed=0) -> Path:
    from safetensors.torch import save_file

    cfg = ViTConfig(patch_size=patch, width=width, layers=layers, head_dim=width // heads, mlp_width=mlp,
                    norm="layer_norm", norm_eps=1e-6)
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(to_hf_names(LlavaViT(cfg).state_dict(), layers), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "onevision_encoder", "hidden_size": width, "num_attention_heads": heads,
        "num_hidden_layers": layers, "intermediate_size": mlp, "patch_size": patch, "image_size": 224,
        "layer_norm_eps": 1e-6, "layer_norm_type": "layer_norm", "rope_theta": 10000.0,
        "rope_temporal_size": 64, "use_head": True, "hidden_act": "gelu"}, indent=2))
    return folder


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("--variant", default="llava_vit_base_ln", help="a backbone.pt variant, or 'hf_large'")
    a = ap.parse_args()
    print(random_hf_folder(a.out) if a.variant == "hf_large" else random_backbone(a.out, a.variant))
