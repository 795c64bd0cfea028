"""LLaVA-ViT (OneVision-Encoder) video encoder, written from the project's spec.

State-dict compatible with the original `backbone.pt` checkpoints: the parameter names
below (conv1, ln_pre, transformer.layers.N.{ln_1,attn,ln_2,mlp}, ln_post, head) are the
checkpoint's. Attention runs through `F.scaled_dot_product_attention`, so the
3136x3136 attention matrix of a 16-frame clip is never materialised.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .variants import VARIANTS, ViTConfig

__all__ = ["VARIANTS", "ViTConfig", "LlavaViT", "flops_per_clip", "temporal_positions"]


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 whatever the activation dtype (weight only)."""

    def __init__(self, dim: int, eps: Optional[float] = None):
        super().__init__()
        self.eps = torch.finfo(torch.float32).eps if eps is None else eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)


def make_norm(cfg: ViTConfig) -> nn.Module:
    if cfg.norm == "rms_norm":
        return RMSNorm(cfg.width, cfg.norm_eps)
    if cfg.norm == "layer_norm":
        return nn.LayerNorm(cfg.width, eps=1e-5 if cfg.norm_eps is None else cfg.norm_eps)
    raise ValueError(f"unknown norm type {cfg.norm!r}")


def rope_angles(cfg: ViTConfig, t_pos: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Rotary angles (N, head_dim/2) in float32 for tokens ordered frame, row, column.

    The head_dim/2 frequency slots are split 4:6:6 between time, rows and columns; each
    axis with n slots has inverse frequencies theta^(-k/n), k = 0..n-1.
    """
    half = cfg.head_dim // 2
    unit = half // 16
    slots = (4 * unit, 6 * unit, 6 * unit)
    device = t_pos.device
    inv = [1.0 / cfg.rope_theta ** (torch.arange(n, device=device, dtype=torch.float32) / n) for n in slots]
    t_pos = t_pos.to(torch.float32)
    rows = torch.arange(h, device=device, dtype=torch.float32)
    cols = torch.arange(w, device=device, dtype=torch.float32)
    T = t_pos.numel()
    ft = (t_pos[:, None] * inv[0]).view(T, 1, 1, -1).expand(T, h, w, -1)
    fh = (rows[:, None] * inv[1]).view(1, h, 1, -1).expand(T, h, w, -1)
    fw = (cols[:, None] * inv[2]).view(1, 1, w, -1).expand(T, h, w, -1)
    return torch.cat([ft, fh, fw], dim=-1).reshape(T * h * w, half)


def rope_cos_sin(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin laid out half-duplicated: (cos f, cos f), as the checkpoints were trained."""
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate_adjacent_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_adjacent_pairs(x) * sin


def temporal_positions(num_frames: int, rule: str, device=None) -> torch.Tensor:
    """Rotary time coordinate of each frame of a clip.

    contiguous: frame k has t = k. spread64: t = floor(k * 63 / (T - 1)), i.e.
    linspace(0, 63, T) truncated, computed exactly in integers.
    """
    k = torch.arange(num_frames, device=device)
    if rule == "contiguous" or num_frames == 1:
        return k
    if rule == "spread64":
        return (k * 63) // (num_frames - 1)
    raise ValueError(f"unknown temporal position rule {rule!r}")


class SelfAttention(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.in_proj = nn.Linear(cfg.width, 3 * cfg.width)
        self.out_proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.in_proj(x).view(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q = apply_rope(q, cos, sin).to(v.dtype)
        k = apply_rope(k, cos, sin).to(v.dtype)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = SelfAttention(cfg)
        self.ln_2 = make_norm(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.width, cfg.mlp_width), nn.GELU(), nn.Linear(cfg.mlp_width, cfg.width))

    def forward(self, x, cos, sin):
        x = x + self.attn(self.ln_1(x), cos, sin)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))

    def forward(self, x, cos, sin):
        for layer in self.layers:
            x = layer(x, cos, sin)
        return x


class PoolingAttention(nn.Module):
    """`nn.MultiheadAttention(batch_first=True)` semantics and parameter names, on SDPA."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        B, Nq, C = query.shape
        Nk = kv.shape[1]
        wq, wkv = self.in_proj_weight.split([C, 2 * C])
        bq, bkv = self.in_proj_bias.split([C, 2 * C])
        q = F.linear(query, wq, bq).view(B, Nq, self.heads, -1).transpose(1, 2)
        k, v = F.linear(kv, wkv, bkv).view(B, Nk, 2, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(B, Nq, C))


class PoolingHead(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, cfg.width))
        self.attention = PoolingAttention(cfg.width, cfg.heads)
        self.norm = RMSNorm(cfg.width, cfg.norm_eps)  # RMSNorm in every variant
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(cfg.width, cfg.mlp_width))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("fc2", nn.Linear(cfg.mlp_width, cfg.width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attention(self.probe.expand(x.shape[0], -1, -1).to(x.dtype), x)
        y = y + self.mlp(self.norm(y))
        return y[:, 0]


class LlavaViT(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.conv1 = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.ln_pre = make_norm(cfg)
        self.transformer = Transformer(cfg)
        self.ln_post = make_norm(cfg)
        self.head = PoolingHead(cfg)

    def rope_tables(self, t_pos: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (cos, sin), each (N, head_dim), for a T x h x w token grid."""
        return rope_cos_sin(rope_angles(self.cfg, t_pos, h, w))

    def forward(self, video: torch.Tensor, t_pos: Optional[torch.Tensor] = None) -> dict:
        """video: (B, 3, T, H, W) or (B, 3, H, W). Returns head_output (B, C) and
        visible_embeddings (B, N, C). t_pos: the T rotary time coordinates (default 0..T-1)."""
        if video.dim() == 4:
            video = video.unsqueeze(2)
        T, H, W = video.shape[2:]
        p = self.cfg.patch_size
        if t_pos is None:
            t_pos = torch.arange(T)
        cos, sin = self.rope_tables(t_pos.to(video.device), H // p, W // p)
        return self.encode(video, cos, sin)

    def encode(self, video: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> dict:
        """The network proper, with the rotary tables given (what a compiled engine calls)."""
        B, _, T, H, W = video.shape
        frames = video.transpose(1, 2).reshape(B * T, 3, H, W)
        x = self.conv1(frames.to(self.conv1.weight.dtype))  # (B*T, C, h, w)
        x = x.flatten(2).transpose(1, 2).reshape(B, -1, self.cfg.width)  # tokens: frame, row, column
        x = self.ln_pre(x)
        x = self.transformer(x, cos, sin)
        x = self.ln_post(x)
        return {"visible_embeddings": x, "head_output": self.head(x)}


def flops_per_clip(cfg: ViTConfig, tokens: int) -> float:
    """Floating-point operations of one clip's forward (matrix products and attention)."""
    C, M, N = cfg.width, cfg.mlp_width, tokens
    per_layer = 2 * N * (4 * C * C + 2 * C * M) + 4 * N * N * C
    return cfg.layers * per_layer + 2 * N * C * 3 * cfg.patch_size**2
