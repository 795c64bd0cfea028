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


def random_dinov3_folder(folder: Path, width=768, layers=12, heads=12, mlp=3072, registers=4, seed=0) -> Path:
    """A DINOv3-base-sized (ViT-B/16, 4 registers) random model, saved by transformers."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(seed)
    config = DINOv3ViTConfig(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                             intermediate_size=mlp, patch_size=16, image_size=224, num_register_tokens=registers)
    DINOv3ViTModel(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"height": 224, "width": 224}, "image_mean": [0.485, 0.456, 0.406],
         "image_std": [0.229, 0.224, 0.225], "do_normalize": True}))
    return folder


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("--variant", default="llava_vit_base_ln",
                    help="a backbone.pt variant, 'hf_large' (OneVision-Encoder-large folder) or 'dinov3_base'")
    a = ap.parse_args()
    make = {"hf_large": random_hf_folder, "dinov3_base": random_dinov3_folder}.get(
        a.variant, lambda out: random_backbone(out, a.variant))
    print(make(a.out))
