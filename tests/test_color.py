"""extractor.decode.color against PyAV's own to_ndarray(format="rgb24"): exact equality,
on synthetic planes that cover every (Y, U, V) and on videos encoded here."""

import av
import numpy as np
import pytest
import torch

from extractor.decode.color import YuvToRgb, conversion_of, reproduces_to_ndarray
from extractor.decode.yuv import split_nv12, yuv420_to_rgb


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The conversions here are small: one thread is faster than waking a pool on a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def planes_of(frame):
    """The frame's Y, U, V planes as numpy arrays without the line padding."""
    sizes = ((frame.height, frame.width), ((frame.height + 1) // 2, (frame.width + 1) // 2))
    return [np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[:h, :w]
            for p, (h, w) in zip(frame.planes, (sizes[0], sizes[1], sizes[1]))]


def frame_from_planes(y, u, v, pix_fmt="yuv420p", colorspace=2, color_range=0):
    frame = av.VideoFrame(y.shape[1], y.shape[0], pix_fmt)
    for plane, data in zip(frame.planes, (y, u, v)):
        np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:data.shape[0], :data.shape[1]] = data
    frame.colorspace, frame.color_range = colorspace, color_range
    return frame


def converted(frames):
    """yuv420_to_rgb on the frames' planes, with each frame's own conversion."""
    out = []
    for frame in frames:
        y, u, v = (torch.from_numpy(np.ascontiguousarray(p))[None] for p in planes_of(frame))
        out.append(yuv420_to_rgb(y, u, v, conversion_of(frame))[0].numpy())
    return np.stack(out)


def every_pair_planes(n):
    """n frames of 512x512: each 2x2 block has its own (U, V), all 65536 pairs; its four
    luma samples are (U + V + 64 j + k) % 256 in frame k, so one frame holds every (Y, U)
    and every (Y, V) pair and 64 frames every (Y, U, V)."""
    block = np.arange(256 * 256).reshape(256, 256)
    u, v = block // 256, block % 256
    y = np.empty((n, 512, 512), np.uint8)
    for k in range(n):
        for j, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            y[k, dy::2, dx::2] = (u + v + 64 * j + k) % 256
    return y, u.astype(np.uint8), v.astype(np.uint8)


def encode(path, width, height, codec="libx264", pix_fmt="yuv420p", n=3, options=None, **tags):
    """A short video of noisy gradients (so the planes take many values), tagged with the
    codec context's colorspace / color_range / color_primaries / color_trc from `tags`."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for name, value in tags.items():
            setattr(stream.codec_context, name, value)
        stream.options = options if options is not None else {"preset": "ultrafast", "crf": "18"}
        for i in range(n):
            rgb = np.stack([xx * 4 + 9 * i, yy * 5, (xx + yy) * 3 + 17 * i], -1) % 256
            rgb = np.clip(rgb + rng.integers(-24, 25, rgb.shape), 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decoded(path):
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


@pytest.mark.parametrize("pix_fmt, colorspace, color_range, expected", [
    ("yuv420p", 2, 0, YuvToRgb("bt601", False)),  # untagged
    ("yuv420p", 5, 1, YuvToRgb("bt601", False)),  # BT.470BG
    ("yuv420p", 6, 1, YuvToRgb("bt601", False)),  # SMPTE 170M
    ("yuv420p", 0, 1, YuvToRgb("bt601", False)),  # tagged RGB: libswscale's default matrix
    ("yuv420p", 1, 1, YuvToRgb("bt709", False)),
    ("yuv420p", 1, 2, YuvToRgb("bt709", True)),
    ("yuv420p", 2, 2, YuvToRgb("bt601", True)),
    ("yuvj420p", 2, 0, YuvToRgb("bt601", True)),
    ("yuvj420p", 1, 1, YuvToRgb("bt709", True)),  # yuvj is full range whatever the tag says
    ("yuv420p", 4, 0, YuvToRgb("fcc", False)),
    ("yuv420p", 7, 0, YuvToRgb("smpte240m", False)),
    ("yuv420p", 9, 0, YuvToRgb("bt2020", False)),
    ("yuv420p", 9, 2, YuvToRgb("bt2020", True)),
])
def test_every_chroma_pair_matches_to_ndarray(pix_fmt, colorspace, color_range, expected):
    y, u, v = every_pair_planes(1)
    frame = frame_from_planes(y[0], u, v, pix_fmt, colorspace, color_range)
    assert conversion_of(frame) == expected and reproduces_to_ndarray(frame)
    assert np.array_equal(converted([frame])[0], frame.to_ndarray(format="rgb24"))


def test_every_yuv_triple_matches_to_ndarray():
    """All 256^3 (Y, U, V), BT.601 limited range (untagged video), in one batch."""
    y, u, v = every_pair_planes(64)
    want = np.stack([frame_from_planes(plane, u, v).to_ndarray(format="rgb24") for plane in y])
    n = len(y)
    got = yuv420_to_rgb(torch.from_numpy(y), torch.from_numpy(u).expand(n, -1, -1),
                        torch.from_numpy(v).expand(n, -1, -1), YuvToRgb())
    assert np.array_equal(got.numpy(), want)


@pytest.mark.parametrize("width, height", [(1, 2), (2, 2), (3, 4), (15, 2), (17, 6), (33, 10), (64, 48), (101, 20)])
def test_odd_widths_and_even_heights_match(width, height):
    rng = np.random.default_rng(width * 1000 + height)
    y = rng.integers(0, 256, (height, width), dtype=np.uint8)
    u, v = rng.integers(0, 256, (2, (height + 1) // 2, (width + 1) // 2), dtype=np.uint8)
    frame = frame_from_planes(y, u, v, colorspace=1, color_range=1)
    assert reproduces_to_ndarray(frame)
    assert np.array_equal(converted([frame])[0], frame.to_ndarray(format="rgb24"))


@pytest.mark.parametrize("name, width, height, codec, pix_fmt, tags, options", [
    ("untagged", 66, 38, "libx264", "yuv420p", {}, None),
    ("bt709", 64, 48, "libx264", "yuv420p", dict(colorspace=1, color_primaries=1, color_trc=1), None),
    ("bt470bg", 64, 48, "libx264", "yuv420p", dict(colorspace=5, color_primaries=5, color_trc=5), None),
    ("full range bt709", 66, 38, "libx264", "yuv420p", dict(colorspace=1, color_range=2), None),
    ("yuvj420p", 64, 48, "libx264", "yuvj420p", {}, None),
    ("odd width ffv1", 65, 48, "ffv1", "yuv420p", dict(colorspace=1), {}),
    ("interlaced mpeg2", 64, 48, "mpeg2video", "yuv420p", {}, {"flags": "+ildct+ilme"}),
    ("interlaced h264", 66, 40, "libx264", "yuv420p", dict(colorspace=1),
     {"preset": "ultrafast", "crf": "18", "x264-params": "interlaced=1:tff=1"}),
])
def test_encoded_videos_match_to_ndarray(tmp_path, name, width, height, codec, pix_fmt, tags, options):
    frames = decoded(encode(tmp_path / "v.mkv", width, height, codec, pix_fmt, options=options, **tags))
    assert frames and all(reproduces_to_ndarray(f) for f in frames)
    if name.startswith("interlaced"):
        assert all(f.interlaced_frame and conversion_of(f).interlaced for f in frames)
    want = np.stack([f.to_ndarray(format="rgb24") for f in frames])
    assert np.array_equal(converted(frames), want)


def test_rejects_what_ffmpeg_converts_otherwise(tmp_path):
    rng = np.random.default_rng(7)
    y = rng.integers(0, 256, (63, 64), dtype=np.uint8)
    u, v = rng.integers(0, 256, (2, 32, 32), dtype=np.uint8)
    odd_height = frame_from_planes(y, u, v)
    assert not reproduces_to_ndarray(odd_height)  # the general scaler, with interpolated chroma
    assert not np.array_equal(converted([odd_height])[0], odd_height.to_ndarray(format="rgb24"))

    # Interlaced with fields of odd height (H % 4 == 2): the general scaler again, per field.
    interlaced = decoded(encode(tmp_path / "i.mpg", 64, 38, "mpeg2video", options={"flags": "+ildct+ilme"}))
    assert interlaced[0].interlaced_frame and not reproduces_to_ndarray(interlaced[0])
    assert not np.array_equal(converted(interlaced[:1])[0], interlaced[0].to_ndarray(format="rgb24"))

    even = frame_from_planes(y[:62], u[:31], v[:31])
    for pix_fmt in ("yuv422p", "yuv444p", "nv12", "yuv420p10le", "rgb24"):
        assert not reproduces_to_ndarray(even.reformat(format=pix_fmt))
    even.colorspace = 8  # YCgCo: to_ndarray refuses it
    assert not reproduces_to_ndarray(even)


@pytest.mark.parametrize("height, width, pitch", [(48, 64, 64), (38, 66, 80), (10, 17, 32), (7, 6, 6)])
def test_nv12_split_gives_the_planar_result(height, width, pitch):
    rng = np.random.default_rng(height)
    n, chroma_h, chroma_w = 2, (height + 1) // 2, (width + 1) // 2
    y = torch.from_numpy(rng.integers(0, 256, (n, height, width), dtype=np.uint8))
    u, v = (torch.from_numpy(rng.integers(0, 256, (n, chroma_h, chroma_w), dtype=np.uint8)) for _ in range(2))
    nv12 = torch.zeros(n, height + chroma_h, pitch, dtype=torch.uint8)
    nv12[:, :height, :width] = y
    nv12[:, height:, 0:2 * chroma_w:2] = u
    nv12[:, height:, 1:2 * chroma_w:2] = v
    split = split_nv12(nv12) if pitch == width else split_nv12(nv12, width=width)
    for got, want in zip(split, (y, u, v)):
        assert torch.equal(got, want)
    conversion = YuvToRgb("bt709", False)
    assert torch.equal(yuv420_to_rgb(*split, conversion), yuv420_to_rgb(y, u, v, conversion))


def test_compiled_conversion_matches(tmp_path):
    frames = decoded(encode(tmp_path / "v.mp4", 66, 38, n=2, colorspace=1))
    y, u, v = (torch.from_numpy(np.stack([np.ascontiguousarray(planes_of(f)[i]) for f in frames])) for i in range(3))
    compiled = torch.compile(yuv420_to_rgb, dynamic=True)
    got = compiled(y, u, v, conversion_of(frames[0]))
    assert np.array_equal(got.numpy(), np.stack([f.to_ndarray(format="rgb24") for f in frames]))
