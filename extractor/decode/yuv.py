"""YUV 4:2:0 planes to RGB in torch, with the arithmetic of FFmpeg's x86 converter, so that
the GPU gives exactly the pixels PyAV's to_ndarray("rgb24") gives on the CPU (decode.color
says which conversion, and when it applies)."""

from __future__ import annotations

import torch

from .color import YuvToRgb, kernel_constants


def conversion_params(conversion: YuvToRgb, device=None) -> torch.Tensor:
    """A conversion as data: int32 (7,), the six constants of `kernel_constants` and whether
    frames are converted field by field. One compiled graph then serves every matrix, range
    and scan type (as Python values, each was a variant compiled of its own)."""
    return torch.tensor([*kernel_constants(conversion), int(conversion.interlaced)], dtype=torch.int32, device=device)


def chroma_rows(height: int, interlaced: torch.Tensor, device) -> torch.Tensor:
    """For each luma row, the chroma row FFmpeg pairs it with (kept inside the chroma plane
    for the heights FFmpeg converts otherwise). `interlaced`: a tensor, nonzero for frames
    converted field by field."""
    rows = torch.arange(height, device=device)
    rows = torch.where(interlaced != 0, (rows // 4) * 2 + rows % 2, rows // 2)
    return rows.clamp(max=(height + 1) // 2 - 1)


def yuv420_to_rgb(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor, conversion) -> torch.Tensor:
    """uint8 RGB (n, H, W, 3) from uint8 planes y (n, H, W), u and v (n, ceil(H/2), ceil(W/2)),
    as FFmpeg's x86 yuv2rgb kernel computes it (pmulhw: a product's high 16 bits, floored),
    with the constants of `kernel_constants` (`conversion`: a YuvToRgb, or its
    `conversion_params` on the planes' device):
        luma = (8 Y - y_offset) * y_coeff >> 16,   u = 8 U - 1024,   v = 8 V - 1024
        R = luma + (v * v_to_r >> 16)
        G = luma + (u * u_to_g >> 16) + (v * v_to_g >> 16)
        B = luma + (u * u_to_b >> 16)
    each clamped to 0..255. Chroma terms are computed once per chroma sample, then spread
    over their pixels. u and v may be strided views (an NV12 plane's U and V: split_nv12)."""
    params = conversion if isinstance(conversion, torch.Tensor) else conversion_params(conversion, y.device)
    y_offset, y_coeff, v_to_r, u_to_g, v_to_g, u_to_b, interlaced = params.unbind()
    height, width = y.shape[-2:]
    luma = ((y.to(torch.int32) * 8 - y_offset) * y_coeff >> 16).to(torch.int16)
    u8 = u.to(torch.int32) * 8 - 1024
    v8 = v.to(torch.int32) * 8 - 1024
    chroma = torch.stack([v8 * v_to_r >> 16, (u8 * u_to_g >> 16) + (v8 * v_to_g >> 16), u8 * u_to_b >> 16],
                         dim=-1).to(torch.int16)  # (n, ch, cw, 3)
    rows = chroma_rows(height, interlaced, y.device)
    cols = torch.arange(width, device=y.device) // 2
    spread = chroma.index_select(1, rows).index_select(2, cols)
    return (spread + luma.unsqueeze(-1)).clamp(0, 255).to(torch.uint8)


def split_nv12(nv12: torch.Tensor, height: int | None = None, width: int | None = None):
    """(y, u, v) views of NV12 frames (n, rows, pitch): the luma plane's `height` rows, then
    ceil(height/2) rows of interleaved U, V. height defaults to rows * 2 // 3 (right for
    rows == height + ceil(height/2)), width to the pitch."""
    if height is None:
        height = nv12.shape[1] * 2 // 3
    if width is None:
        width = nv12.shape[2]
    chroma_h, chroma_w = (height + 1) // 2, (width + 1) // 2
    uv = nv12[:, height:height + chroma_h, :2 * chroma_w]
    return nv12[:, :height, :width], uv[..., 0::2], uv[..., 1::2]
