"""Which YUV 4:2:0 -> RGB conversion FFmpeg applies to a frame, and when the GPU can reproduce it
(decode.yuv does the arithmetic): pixel for pixel what PyAV's `frame.to_ndarray(format="rgb24")`
gives on the CPU (PyAV 18.1 with its bundled FFmpeg 8.1 / libswscale 9.5, x86-64).

What FFmpeg does there, read from its source and checked against it on every (Y, U, V):
- PyAV calls sws_scale_frame with the frame's own colorspace and color_range. The matrix is
  libswscale's integer table for that colorspace (unspecified, RGB, BT.470BG and SMPTE 170M
  all give BT.601); the range is full for yuvj420p or color_range JPEG, limited otherwise.
- Same-size 8-bit yuv420p -> rgb24 with an even output height takes libswscale's unscaled
  special converter: each 2x2 block of luma uses its one chroma sample as it is (no
  interpolation, chroma siting ignored). On x86 that converter is one SSSE3 kernel (there is
  no AVX2 or AVX-512 variant), which works in 16-bit lanes with pmulhw; its arithmetic is
  the formula in `yuv420_to_rgb`. Odd heights go through the general scaler instead
  (interpolated chroma), which this module does not reproduce.
- Any width: the SSSE3 kernel converts whole groups of 16 pixels, and PyAV's rgb24 rows are
  padded to a multiple of 16 pixels, so the last odd column is converted like the others.
- Frames flagged interlaced are converted field by field (sws_scale_frame in libswscale 9,
  which PyAV 17+ calls): luma row r takes chroma row 2 * (r // 4) + r % 2, and each field's
  height must be even, so H % 4 == 0. decord 0.6 converts such frames as progressive ones.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass

# libswscale's ff_yuv2rgb_coeffs rows: (crv, cbu, cgu, cgv), 16.16 fixed point, for
# limited-range input.
MATRIX_COEFFICIENTS = {
    "bt601": (104597, 132201, 25675, 53279),
    "bt709": (117489, 138438, 13975, 34925),
    "fcc": (104448, 132798, 24759, 53109),
    "smpte240m": (117579, 136230, 16907, 35559),
    "bt2020": (110013, 140363, 12277, 42626),
}

# AVColorSpace -> matrix, for the colorspaces sws_scale_frame accepts with yuv420p input
# (it refuses reserved, YCgCo, BT.2020 CL, SMPTE 2085, the chroma-derived ones and ICtCp).
MATRIX_OF_COLORSPACE = {
    0: "bt601",  # RGB: not a YUV matrix; libswscale falls back to its default
    1: "bt709",
    2: "bt601",  # unspecified
    4: "fcc",
    5: "bt601",  # BT.470BG
    6: "bt601",  # SMPTE 170M
    7: "smpte240m",
    9: "bt2020",  # BT.2020 non-constant luminance
}

AVCOL_RANGE_JPEG = 2
VERIFIED_SWSCALE_MAJOR = 9


@dataclass(frozen=True)
class YuvToRgb:
    """One FFmpeg yuv420p -> rgb24 conversion: the matrix, the input range, and whether the
    frame is converted field by field (interlaced; interlaced=False on such a frame gives
    decord's pixels instead)."""

    matrix: str = "bt601"
    full_range: bool = False
    interlaced: bool = False


def conversion_from_tags(colorspace: int, full_range: bool, interlaced: bool = False) -> YuvToRgb | None:
    """The conversion for an AVColorSpace value and range, as libswscale picks it; None for
    the colorspaces it refuses (to_ndarray raises for those)."""
    matrix = MATRIX_OF_COLORSPACE.get(int(colorspace))
    return None if matrix is None else YuvToRgb(matrix, bool(full_range), bool(interlaced))


def conversion_of(frame) -> YuvToRgb | None:
    """The conversion PyAV's to_ndarray(format="rgb24") applies to this PyAV VideoFrame, or
    None when it is not an 8-bit 4:2:0 frame this module handles."""
    name = frame.format.name
    if name not in ("yuv420p", "yuvj420p"):
        return None
    full = name == "yuvj420p" or frame.color_range == AVCOL_RANGE_JPEG
    return conversion_from_tags(frame.colorspace, full, frame.interlaced_frame)


def ffmpeg_converts_unscaled(height: int, interlaced: bool) -> bool:
    """Whether FFmpeg converts a frame of this height with its nearest-chroma converter (the
    one reproduced here) rather than the general scaler."""
    return height > 0 and height % (4 if interlaced else 2) == 0


@functools.lru_cache(maxsize=1)
def ffmpeg_build_verified() -> bool:
    """The rule here was read from, and checked against, libswscale 9 on x86-64 (its SSSE3
    kernel); other builds or CPUs (the C table code, ARM NEON) round differently."""
    import av

    return (platform.machine().lower() in ("x86_64", "amd64")
            and av.library_versions["libswscale"][0] == VERIFIED_SWSCALE_MAJOR)


def reproduces_to_ndarray(frame) -> bool:
    """Whether `yuv420_to_rgb` on this frame's planes gives exactly its
    to_ndarray(format="rgb24"); when not, convert it on the CPU with to_ndarray."""
    conversion = conversion_of(frame)
    return (conversion is not None and ffmpeg_converts_unscaled(frame.height, conversion.interlaced)
            and ffmpeg_build_verified())


def _round_to_int16(value: int) -> int:
    return max(-0x8000, min(0x7FFF, (value + (1 << 15)) >> 16))


def _c_div(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def kernel_constants(conversion: YuvToRgb) -> tuple[int, int, int, int, int, int]:
    """(y_offset, y_coeff, v_to_r, u_to_g, v_to_g, u_to_b): the 16-bit constants libswscale's
    ff_yuv2rgb_c_init_tables gives the SIMD kernel (default brightness, contrast, saturation)."""
    crv, cbu, cgu, cgv = MATRIX_COEFFICIENTS[conversion.matrix]
    cgu, cgv = -cgu, -cgv
    if conversion.full_range:
        cy, oy = 1 << 16, 0
        crv, cbu, cgu, cgv = (_c_div(c * 224, 255) for c in (crv, cbu, cgu, cgv))
    else:
        cy, oy = _c_div((1 << 16) * 255, 219), 16 << 16
    return (_round_to_int16(oy << 3), _round_to_int16(cy << 13), _round_to_int16(crv << 13),
            _round_to_int16(cgu << 13), _round_to_int16(cgv << 13), _round_to_int16(cbu << 13))


def gpu_conversion(frame) -> YuvToRgb | None:
    """The conversion for decode.yuv to reproduce this PyAV frame's to_ndarray("rgb24"), or
    None when the frame must be converted on the CPU. No torch here: decoder processes call it."""
    return conversion_of(frame) if reproduces_to_ndarray(frame) else None
