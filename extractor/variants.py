"""The LLaVA-ViT sizes: the encoder's shape (ViTConfig) and the published variants by name.

Apart from model.py (which builds them) and without torch, so that the command lists the
variants among its flags before anything imports torch (the workers' server starts then)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class ViTConfig:
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    head_dim: int = 64
    mlp_width: int = 3072
    norm: str = "layer_norm"  # "layer_norm" or "rms_norm", every norm but the head's
    # None means each norm's PyTorch default: 1e-5 for LayerNorm, float32 epsilon for RMSNorm.
    norm_eps: Optional[float] = None
    rope_theta: float = 10000.0

    @property
    def heads(self) -> int:
        return self.width // self.head_dim


VARIANTS = {
    "llava_vit_small_ln": ViTConfig(16, 384, 6, 64, 1536, "layer_norm"),
    "llava_vit_base_ln": ViTConfig(16, 768, 12, 64, 3072, "layer_norm"),
    "llava_vit_base_rms": ViTConfig(16, 768, 12, 64, 3072, "rms_norm"),
    "llava_vit_large_ln": ViTConfig(14, 1024, 24, 64, 4096, "layer_norm"),
    "llava_vit_huge_ln": ViTConfig(14, 1280, 32, 64, 5120, "layer_norm"),
}
