"""The GPU as a host of video decoding, known before any session starts: its NVDEC engines
(from which the sessions are counted), NVML queries that do not start CUDA, whether
PyNvVideoCodec is there, which videos NVDEC may take, and the green context that leaves
NVDEC some of the GPU's SMs while the model runs."""

from __future__ import annotations

import ctypes

import torch

from .common import VideoInfo, first_line

# NVDEC engines per GPU (NVIDIA's Video Codec SDK support matrix); the first match of a
# name fragment wins. Unknown GPUs count as one engine.
NVDEC_ENGINES = (("H200", 7), ("H100", 7), ("H800", 7), ("GH200", 7), ("B200", 7), ("A100", 5), ("A800", 5),
                 ("A30", 4), ("L40", 3), ("L4", 4), ("A40", 2), ("A10", 2), ("A16", 4), ("A2", 1),
                 ("RTX 6000 Ada", 3), ("RTX 4090", 2), ("RTX 4080", 2), ("T4", 2), ("V100", 1))
# Sessions per engine, as a fraction: 3/2, 10 on an H100 (7 engines). Beside the model the
# sessions' threads take the cores and GIL that the decoder processes and the thread feeding
# the GPU need: at 720p stride 16, 10 sessions gave 354.6-360.1 clips/s end to end against
# 321.9-349.9 for 14 (H100, two calls, 2026-11-27 18:15-18:42 UTC; OPTIMIZATION_SUMMARY.md,
# "NVDEC sessions: 10 per H100").
SESSIONS_PER_ENGINE = (3, 2)


def sessions_for(engines: int) -> int:
    per, of = SESSIONS_PER_ENGINE
    return max(1, engines * per // of)


def engines_of(gpu_name: str) -> int:
    return next((n for fragment, n in NVDEC_ENGINES if fragment in gpu_name), 1)


def _nvml(query, default):
    """query(nvml library) through NVML (the driver's management library), without starting
    CUDA in this process; `default` where NVML is not there or fails."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        if nvml.nvmlInit_v2() != 0:
            return default
        try:
            return query(nvml)
        finally:
            nvml.nvmlShutdown()
    except (OSError, AttributeError):
        return default


def gpu_name_from_nvml(index: int = 0) -> str:
    """The GPU's name ('' if unknown)."""
    def query(nvml):
        handle, name = ctypes.c_void_p(), ctypes.create_string_buffer(96)
        ok = nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) == 0 and \
            nvml.nvmlDeviceGetName(handle, name, len(name)) == 0
        return name.value.decode(errors="replace") if ok else ""

    return _nvml(query, "")


def gpu_count_from_nvml() -> int:
    """The machine's GPUs (0 if unknown)."""
    def query(nvml):
        count = ctypes.c_uint()
        return count.value if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0 else 0

    return _nvml(query, 0)


def nvdec_available() -> str:
    """'' if PyNvVideoCodec imports, else why not."""
    try:
        import PyNvVideoCodec  # noqa: F401
    except Exception as e:  # ImportError, or a missing libnvcuvid
        return first_line(e)
    return ""


# Not AV1: on every AV1 file of the bench's corpora (SVT-AV1, Matroska) NVDEC failed at the
# first frame ("HandleVideoSequence"; H200, PyNvVideoCodec 2.2.4, 2026-12-04): the CPU decodes it.
NVDEC_CODECS = {"h264", "hevc", "vp9"}


def nvdec_cannot(info: VideoInfo) -> str:
    """Why NVDEC should not decode this video ('' if it can): it must give exactly the
    frames the CPU path gives (8-bit 4:2:0 with an exact colour conversion, progressive,
    no open GOPs: on the leading pictures of x264 open-gop and HEVC CRA streams NVDEC's
    pixels were not FFmpeg's, decoding from the start included; no variable frame rate in
    Matroska or WebM)."""
    if info.codec not in NVDEC_CODECS:
        return f"codec {info.codec}"
    if info.layout != "yuv420p":
        return f"pixel format {info.pix_fmt}"
    if info.interlaced:
        return "interlaced"
    if info.leading_pictures:  # NVDEC's pixels differed from FFmpeg's on them (H100, 2026-11-27)
        return "open GOP (frames decoded after a keyframe are shown before it)"
    if info.variable_rate and any(name in info.container.split(",") for name in ("matroska", "webm")):
        # PyNvVideoCodec numbers Matroska frames by time ("seek accuracy may be impacted"): on
        # one with frames of 33 and 50 ms its features differed from FFmpeg's (issue 25's H200 run)
        return "variable frame rate in Matroska/WebM"
    return ""


# Green contexts take SMs in groups (8 on Hopper, fewer on older GPUs): a multiple of 8 suits all.
GREEN_SM_STEP = 8


def green_stream(device: torch.device, sms: int):
    """(green context, stream): a stream whose kernels run on `sms` of the GPU's SMs only
    (a CUDA green context, torch.cuda.green_contexts; keep the context while the stream is
    in use)."""
    from torch.cuda.green_contexts import GreenContext

    try:
        ctx = GreenContext.create(num_sms=sms, device_id=device.index or 0)
    except TypeError:  # torch releases whose create takes positional arguments only
        ctx = GreenContext.create(sms, device.index or 0)
    return ctx, ctx.Stream()


def leave_sms_to_nvdec(device: torch.device, leave: int):
    """Runs this thread's CUDA work (the worker's main thread: the model) on all but about
    `leave` of the GPU's SMs, through a green context, and returns (context, '') or (None,
    why not). Beside matrix products on every SM, 14 NVDEC sessions decoded 2,475 frames/s
    instead of 6,792; beside the same on 128 of the H100's 132 SMs, 5,387, the products
    losing 6% (bench/nvdec_load.py, 2026-11-27). PyNvVideoCodec's per-frame GPU work (on a
    stream of the highest priority, or the default one, alike) waits for free SMs."""
    try:
        total = torch.cuda.get_device_properties(device).multi_processor_count
        sms = (total - leave) // GREEN_SM_STEP * GREEN_SM_STEP
        if sms < GREEN_SM_STEP:
            return None, f"{total} SMs are too few to leave {leave}"
        ctx, stream = green_stream(device, sms)
    except Exception as e:  # an older torch or driver
        return None, first_line(e)
    torch.cuda.set_stream(stream)
    return ctx, ""
