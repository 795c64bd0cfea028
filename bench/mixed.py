"""Corpora shaped like real datasets, built from the real clip in bench/media (scaled, looped
back and forth, re-encoded), so that what sizes, codecs and rotations cost shows:

  mixed    many frame sizes from 320x180 to 1920x1080 (some not multiples of 16), portrait
           videos turned by their header and coded upright; H.264 mostly, with HEVC 8- and
           10-bit, VP9 (WebM), AV1 (Matroska) and MJPEG; some interlaced, some with a variable
           frame rate; 24, 25 and 30 fps; lengths from 10 s to 5 min
  uniform  the same names, lengths and frame rates, all 640x480 H.264: what the mixed corpus
           is measured against
  awkward  one short file of each kind a real dataset holds and a corpus of copies hides
           (HEVC 8/10-bit, VP9, AV1, MJPEG 4:2:2, interlaced, VFR Matroska and MP4, 4:4:4 at an
           odd size, 2160p, a display rotation, open GOPs, full range, 10 frames), and four
           broken files (empty, text, truncated, audio only) that must fail by name

    python bench/mixed.py OUT [--kinds mixed,uniform,awkward] [--scale 1.0]

Files are kept if present. `scale` shortens every video (a quick corpus for the CPU)."""

from __future__ import annotations

import argparse
import fractions
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).resolve().parent / "media" / "bigbuckbunny_720p.mp4"
HD_TAGS = {"colorspace": 1, "color_primaries": 1, "color_trc": 1}  # BT.709, as HD footage is tagged


@dataclass(frozen=True)
class Spec:
    """One video to encode: its size as coded (a header rotation turns it on display)."""
    name: str
    width: int
    height: int
    seconds: float
    fps: int = 30
    codec: str = "libx264"
    pix_fmt: str = "yuv420p"
    rotation: int = 0  # display rotation written in the header, degrees counterclockwise
    vfr: bool = False  # frames of 33 and 50 ms in turn (a millisecond time base)
    options: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    frames: int = 0  # overrides seconds * fps

    @property
    def count(self) -> int:
        return self.frames or max(1, int(round(self.seconds * self.fps)))


FAST = {  # encoder settings: realistic bitstreams (CABAC, B-frames) at a bearable encoding speed
    "libx264": {"preset": "veryfast", "crf": "23"},
    "libx265": {"preset": "ultrafast", "crf": "28", "x265-params": "log-level=none"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "row-mt": "1", "crf": "36", "b": "0"},
    "libsvtav1": {"preset": "12", "crf": "40"},
    "mjpeg": {},
}
EXTENSION = {"libx264": ".mp4", "libx265": ".mp4", "libvpx-vp9": ".webm", "libsvtav1": ".mkv", "mjpeg": ".avi"}

# (coded width, height, display rotation): what phones and YouTube give, portrait included
SIZES = [(320, 180, 0), (426, 240, 0), (480, 270, 0), (640, 360, 0), (640, 480, 0), (636, 358, 0), (854, 480, 0),
         (960, 540, 0), (1280, 720, 0), (1278, 714, 0), (1920, 1080, 0), (360, 640, 0), (640, 360, 90),
         (1280, 720, 270), (720, 480, 0), (568, 320, 0)]
# seconds: 10 s to 5 min, most of them short, as in Charades, THUMOS and HACS (34 videos, 21 min)
LENGTHS = [10, 10, 11, 12, 13, 14, 15, 16, 17, 18, 20, 21, 22, 24, 25, 27, 28, 30, 30, 32, 34, 36, 38, 40, 45, 50, 55,
           60, 70, 80, 90, 120, 150, 300]
# codecs by position (mostly H.264), and the few interlaced or VFR ones
KINDS = ["h264", "h264", "hevc", "vp9", "h264", "h264", "av1", "h264", "h264", "hevc10", "h264", "vp9", "h264",
         "mjpeg", "h264", "av1", "h264i", "h264", "hevc", "h264", "vp9", "h264vfr", "h264", "h264", "av1", "h264",
         "hevc", "h264", "vp9", "h264", "h264", "mkvvfr", "h264", "h264"]


def kind_spec(kind: str, name: str, width: int, height: int, seconds: float, fps: int, rotation: int = 0) -> Spec:
    tags = HD_TAGS if height >= 720 or width >= 720 else {}
    base = Spec(name, width, height, seconds, fps, rotation=rotation, tags=tags)
    if kind == "hevc":
        return replace(base, codec="libx265")
    if kind == "hevc10":
        return replace(base, codec="libx265", pix_fmt="yuv420p10le")
    if kind == "vp9":
        return replace(base, codec="libvpx-vp9", rotation=0)
    if kind in ("av1", "mkvvfr"):  # AV1 in Matroska; a VFR Matroska file is H.264 in it
        av1 = kind == "av1"
        return replace(base, codec="libsvtav1" if av1 else "libx264", rotation=0, vfr=not av1,
                       width=width // 8 * 8, height=height // 8 * 8, name=name if av1 else name + ".mkv")
    if kind == "mjpeg":
        return replace(base, codec="mjpeg", pix_fmt="yuvj422p", rotation=0, tags={})
    if kind == "h264i":
        return replace(base, options={"x264-params": "interlaced=1:tff=1"}, height=height // 4 * 4)
    if kind == "h264vfr":
        return replace(base, vfr=True)
    return base


def mixed_specs() -> list[Spec]:
    out = []
    for i, (seconds, kind) in enumerate(zip(LENGTHS, KINDS)):
        width, height, rotation = SIZES[(i * 7) % len(SIZES)]  # every size, spread over the lengths
        fps = (30, 25, 30, 24)[i % 4]
        out.append(kind_spec(kind, f"m{i:02d}_{kind}_{width}x{height}", width, height, seconds, fps, rotation))
    return out


def uniform_specs() -> list[Spec]:
    """The mixed corpus's names, lengths and frame rates, all 640x480 H.264."""
    return [Spec(s.name.split("_")[0] + "_h264_640x480", 640, 480, s.seconds, s.fps, frames=s.count)
            for s in mixed_specs()]


def awkward_specs() -> list[Spec]:
    return [
        Spec("a_hevc8", 960, 540, 0, frames=120, codec="libx265", tags=HD_TAGS),
        Spec("a_hevc10", 960, 540, 0, frames=120, codec="libx265", pix_fmt="yuv420p10le", tags=HD_TAGS),
        Spec("a_vp9", 854, 480, 0, frames=150, codec="libvpx-vp9"),
        Spec("a_av1", 640, 360, 0, frames=150, codec="libsvtav1"),
        Spec("a_mjpeg422", 640, 480, 0, frames=100, codec="mjpeg", pix_fmt="yuvj422p"),
        Spec("a_interlaced", 720, 480, 0, frames=120, options={"x264-params": "interlaced=1:tff=1"}),
        Spec("a_vfr_mkv.mkv", 640, 360, 0, frames=150, vfr=True),
        Spec("a_vfr_mp4", 640, 360, 0, frames=150, vfr=True),
        Spec("a_444_641x361", 641, 361, 0, frames=80, pix_fmt="yuv444p", options={"preset": "veryfast", "crf": "23",
                                                                                 "profile": "high444"}),
        Spec("a_2160p", 3840, 2160, 0, frames=48, tags=HD_TAGS),
        Spec("a_rotated90", 640, 360, 0, frames=100, rotation=90),
        Spec("a_open_gop", 640, 360, 0, frames=200, options={"x264-params": "open-gop=1:keyint=48"}),
        Spec("a_full_range", 1280, 720, 0, frames=100, pix_fmt="yuvj420p", tags=HD_TAGS),
        Spec("a_10_frames", 640, 480, 0, frames=10),
    ]


BROKEN = ("b_empty.mp4", "b_text.mp4", "b_truncated.mp4", "b_audio_only.mp4")


def file_name(spec: Spec) -> str:
    return spec.name if Path(spec.name).suffix else spec.name + EXTENSION[spec.codec]


def source_frames(width: int, height: int, source: Path = SOURCE) -> list:
    """The source's frames scaled to width x height, RGB (each encoder converts them itself)."""
    import av

    with av.open(str(source)) as src:
        return [f.reformat(width, height, "rgb24", interpolation="BICUBIC").to_ndarray() for f in src.decode(video=0)]


def encode(path: Path, spec: Spec, source: Path = SOURCE) -> Path:
    """Writes `spec` to `path` (through a temporary name, so that a kept file is a whole one)."""
    import av

    frames = source_frames(spec.width, spec.height, source)
    loop = frames + frames[-2:0:-1]  # back and forth: no cut a codec would pay for
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream(spec.codec, rate=spec.fps, options={**FAST[spec.codec], **spec.options})
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, spec.pix_fmt
        for name, value in spec.tags.items():
            setattr(stream.codec_context, name, value)
        if spec.rotation:
            stream.set_display_rotation(spec.rotation)
        if spec.vfr:
            stream.codec_context.time_base = fractions.Fraction(1, 1000)
        pts = 0
        for i in range(spec.count):
            frame = av.VideoFrame.from_ndarray(loop[i % len(loop)], format="rgb24")
            if spec.vfr:
                frame.pts, frame.time_base = pts, fractions.Fraction(1, 1000)
                pts += 33 if i % 2 == 0 else 50
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.rename(path)
    return path


def write_broken(out: Path, good: Path) -> list[Path]:
    """The four broken files, the truncated one cut from `good` (an MP4)."""
    import av

    paths = [out / name for name in BROKEN]
    empty, text, truncated, audio = paths
    empty.write_bytes(b"")
    text.write_text("not a video\n" * 50)
    data = good.read_bytes()
    truncated.write_bytes(data[:len(data) // 3])
    if not audio.exists():
        with av.open(str(audio), mode="w") as container:
            stream = container.add_stream("aac", rate=16000)
            samples = np.zeros((1, 1024), dtype=np.float32)
            for i in range(16):
                frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 16000, i * 1024
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return paths


def _encode_job(args) -> str:
    path, spec, source = args
    encode(path, spec, source)
    return path.name


def build(out: Path, specs: list[Spec], scale: float = 1.0, jobs: int = 0, source: Path = SOURCE) -> list[Path]:
    """Encodes the specs missing in `out`, longest first, in parallel processes."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    out.mkdir(parents=True, exist_ok=True)
    if scale != 1.0:
        specs = [replace(s, frames=max(2, int(s.count * scale))) if s.count > 10 else s for s in specs]
    paths = [out / file_name(s) for s in specs]
    todo = sorted(((p, s, source) for p, s in zip(paths, specs) if not p.exists()), key=lambda job: -job[1].count
                  * job[1].width * job[1].height)
    if todo:
        workers = max(1, min(len(todo), jobs or os.cpu_count() or 1))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_encode_job, todo))
    return paths


def build_kind(out: Path, kind: str, scale: float = 1.0, jobs: int = 0, source: Path = SOURCE) -> list[Path]:
    """The corpus `kind` (mixed, uniform, awkward) in out/kind."""
    folder = out / kind
    specs = {"mixed": mixed_specs, "uniform": uniform_specs, "awkward": awkward_specs}[kind]()
    paths = build(folder, specs, scale, jobs, source)
    if kind == "awkward":
        paths += write_broken(folder, next(p for p in paths if p.name == "a_open_gop.mp4"))
    return paths


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--kinds", default="mixed,uniform,awkward")
    ap.add_argument("--scale", type=float, default=1.0, help="lengths times this (a quick corpus)")
    ap.add_argument("--jobs", type=int, default=0, help="encoding processes (default: the cores)")
    a = ap.parse_args()
    for kind in a.kinds.split(","):
        for p in build_kind(a.out, kind, a.scale, a.jobs):
            print(kind, p.name, p.stat().st_size)
