"""The CPU readers, run inside decoder processes: FFmpeg through PyAV (the default) and
decord (the original script's decoder). Each opens a video, says what it is (VideoInfo)
and yields the frames clips need, in order, as numpy planes: Y, U, V for the yuv420p
layout (the GPU converts them to RGB exactly as FFmpeg would), or one RGB array."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from .color import gpu_conversion
from .common import DecodeError, FrameIndex, VideoInfo, check_readable, first_line, quarter_turns


def plane_array(plane, height: int, width: int) -> np.ndarray:
    """A PyAV plane as a (height, width) uint8 view, without its row padding."""
    rows = np.frombuffer(plane, dtype=np.uint8)
    return rows[:height * plane.line_size].reshape(height, plane.line_size)[:, :width]


def forward_frames(indices: np.ndarray, info: VideoInfo, read, convert) -> Iterator[tuple[int, tuple, object]]:
    """Yields (i, *convert(read(i))) for the frames in `indices` (sorted); read(i) returns
    frame i, called with increasing i. Every failure becomes a DecodeError."""
    want = -1
    try:
        for want in map(int, indices):
            yield (want, *convert(read(want)))
    except DecodeError:
        raise
    except StopIteration:
        raise DecodeError(f"stream ended before frame {want} of {info.num_frames}") from None
    except Exception as e:
        raise DecodeError(f"decoding failed near frame {want} of {info.num_frames} ({first_line(e)})") from None


def codec_name(codec) -> str:
    """The format's name (av1), not the decoder's (libdav1d): NVDEC takes videos by format."""
    return getattr(codec, "canonical_name", "") or codec.name


class PyAVReader:
    """FFmpeg through PyAV, pulled frame by frame (flat memory whatever the video's length).
    The frames are decord's, the original script's decoder, pixel for pixel: same FFmpeg
    decoding; RGB conversion on the GPU reproduces FFmpeg's where decode.color can
    (8-bit 4:2:0), else FFmpeg converts on the CPU here (`frame.to_ndarray("rgb24")`)."""

    name = "pyav"

    def __init__(self, path: Path, threads: int = 1, gpu_colour: bool = True, num_frames: int = 0):
        """`num_frames`: the video's frame count where the caller knows it already (a
        segment's: the worker learnt it when the video opened), so that a container without
        one (Matroska, WebM) is not scanned again for every segment."""
        self.path, self.threads = path, threads
        self.fell_back = ""  # why a seek was given up for decoding from the start ('' if it was not)
        check_readable(path)
        import av

        try:
            self.container = av.open(str(path))
        except Exception as e:
            raise DecodeError(f"not a decodable video ({first_line(e)})") from None
        if not self.container.streams.video:
            self.close()
            raise DecodeError("no video stream")
        stream = self.container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        num_frames = num_frames or int(stream.frames or 0)
        if num_frames <= 0:  # containers without a frame count (Matroska, WebM): count the packets, as decord does
            num_frames = count_packets(path)
        if num_frames <= 0 and stream.duration and fps:
            num_frames = int(round(float(stream.duration * stream.time_base) * fps))
        if num_frames <= 0:
            self.close()
            raise DecodeError("no video frames")
        self._decoded = self._demuxed(stream)
        try:
            self._first = next(self._decoded)  # tells the rotation, pixel format and colours
        except StopIteration:
            self.close()
            raise DecodeError("no video frames") from None
        except Exception as e:
            self.close()
            raise DecodeError(f"not a decodable video ({first_line(e)})") from None
        first = self._first
        turns = quarter_turns(getattr(first, "rotation", 0) or 0)
        h, w = first.height, first.width
        self.gpu_colour = gpu_colour
        colour = gpu_conversion(first) if gpu_colour else None
        self.info = VideoInfo(num_frames, fps, *((w, h) if turns % 2 else (h, w)), rotation=turns * 90,
                              colour=colour,
                              codec=codec_name(stream.codec_context.codec), pix_fmt=first.format.name,
                              interlaced=bool(getattr(first, "interlaced_frame", False)))

    def frames(self, indices: np.ndarray, start=None) -> Iterator[tuple[int, tuple, object]]:
        """(i, planes, colour) for the frames in `indices` (sorted), once: (Y, U, V) views
        valid until the next frame, with the YUV->RGB conversion that reproduces FFmpeg's
        for it, or ((H, W, 3) RGB converted here, None) when the GPU cannot reproduce it.
        `start`: FrameIndex.start_of(indices[0], indices[-1]), to begin at a keyframe
        instead of the first frame (a segment of a long video)."""
        if self._first is None:
            raise DecodeError("frames() can be read once per reader")
        first, self._first = self._first, None
        h, w = self.info.coded_size
        ch, cw = (h + 1) // 2, (w + 1) // 2

        def convert(frame):
            if frame.width != w or frame.height != h:
                raise DecodeError(f"frame size changed mid-stream ({frame.width}x{frame.height}, not {w}x{h})")
            colour = gpu_conversion(frame) if self.gpu_colour else None
            if colour is not None:
                p = frame.planes
                return (plane_array(p[0], h, w), plane_array(p[1], ch, cw), plane_array(p[2], ch, cw)), colour
            return (frame.to_ndarray(format="rgb24"),), None

        def decoded():
            yield first
            yield from self._decoded

        if start is not None:
            return forward_frames(indices, self.info, self._seeking_read(int(indices[0]), *start), convert)
        frames, position = decoded(), 0

        def read(want: int):
            nonlocal position
            while True:
                frame = next(frames)
                position += 1
                if position - 1 == want:
                    return frame

        return forward_frames(indices, self.info, read, convert)

    def _seeking_read(self, first: int, keyframe_pts: int, pts: np.ndarray):
        """read(i) for frames first.. after a seek to the keyframe: frame i is the one whose
        timestamp is pts[i - first], and every frame is checked to be the next one. A seek
        that lands past the first frame, or frames out of step with the index (a frame
        dropped or without a timestamp), fall back to decoding from the start, counting
        frames as the plain path does, from the first frame not yet delivered."""
        stream = self.container.streams.video[0]
        seeked = None
        expect = first  # the frame the next decoded one must be
        counting = None  # after a fallback: (frames from the start, frames read so far)

        def out_of_step(why: str):
            nonlocal counting
            self.fell_back = f"decoding from the start from frame {expect}: {why}"
            self.close()
            import av

            self.container = av.open(str(self.path))
            fresh = self.container.streams.video[0]
            fresh.thread_type, fresh.thread_count = "AUTO", self.threads
            counting = [self._demuxed(fresh), 0]

        def read(want: int):
            nonlocal seeked, expect
            if counting is None:
                try:
                    if seeked is None:
                        self.container.seek(keyframe_pts, backward=True, any_frame=False, stream=stream)
                        stream.codec_context.flush_buffers()
                        seeked = self._demuxed(stream)
                    for frame in seeked:
                        if frame.pts is None:
                            out_of_step("a frame without a timestamp")
                            break
                        if expect == first and frame.pts < pts[0]:
                            continue  # from the keyframe up to the segment
                        if frame.pts != pts[expect - first]:
                            out_of_step(f"timestamp {frame.pts}, the index says {pts[expect - first]}")
                            break
                        expect += 1
                        if expect - 1 == want:
                            return frame
                    else:
                        out_of_step("the stream ended")
                except DecodeError:
                    raise
                except Exception as e:  # the seek itself failed
                    if counting is None:
                        out_of_step(first_line(e))
            while True:
                frame = next(counting[0])
                counting[1] += 1
                if counting[1] - 1 == want:
                    return frame

        return read

    def _demuxed(self, stream):
        for packet in self.container.demux(stream):
            yield from packet.decode()

    def close(self):
        container, self.container = getattr(self, "container", None), None
        if container is not None:
            container.close()


class DecordReader:
    """The original script's decoder, decord, read forward frame by frame, RGB on the CPU.
    Same frames as PyAVReader; decord decodes ahead of a slow consumer without bound (5 GB
    held for a 60 s 1080p file, bench/decoder_memory.py), inside its own process here."""

    name = "decord"

    def __init__(self, path: Path, threads: int = 1, gpu_colour: bool = False):
        self.path = path
        check_readable(path)
        import decord

        try:
            self.reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads)
            num_frames = len(self.reader)
            fps = float(self.reader.get_avg_fps())
            if num_frames > 0:
                h, w, channels = self.reader[0].shape
                self.reader.seek(0)
                if channels != 3:  # decord 0.6 on a video with a display rotation
                    raise DecodeError(f"decord returns {channels}-channel frames for this video (it mishandles "
                                      "rotated videos): --decoder auto or cpu reads it")
            else:
                h = w = 0
        except DecodeError:
            raise
        except Exception as e:  # decord raises DECORDError / RuntimeError with multi-line text
            raise DecodeError(f"not a decodable video ({first_line(e)})") from None
        if num_frames <= 0:
            raise DecodeError("no video frames")
        self.info = VideoInfo(num_frames, fps, h, w)

    def frames(self, indices: np.ndarray) -> Iterator[tuple[int, tuple]]:
        """As PyAVReader.frames, skipping with skip_frames (not get_batch: it re-seeks on
        every call and, measured on a 1080p file, ran 5x slower while keeping ~10 MB per
        decoded frame alive)."""
        position = -1

        def read(want: int):
            nonlocal position
            if position < 0:  # inside the loop, so that a failure is a DecodeError
                self.reader.seek(0)
                position = 0
            if want > position:
                self.reader.skip_frames(want - position)
                position = want
            position += 1
            return self.reader.next()

        def convert(frame):
            rgb = frame.asnumpy()
            if rgb.shape != (self.info.height, self.info.width, 3):
                raise DecodeError(f"frame has shape {rgb.shape}, expected {(self.info.height, self.info.width, 3)}")
            return (rgb,), None

        return forward_frames(indices, self.info, read, convert)

    def close(self):
        self.reader = None


SEEKABLE_FORMATS = {"mov", "mp4", "matroska", "webm"}


def video_packets(container):
    """The packets of the container's first video stream, without the demuxer's empty
    end-of-stream packet."""
    return (packet for packet in container.demux(container.streams.video[0]) if packet.size)


def count_packets(path: Path) -> int:
    """The video stream's packets not marked to discard, read without decoding (0 if it
    cannot be read)."""
    import av

    try:
        with av.open(str(path)) as container:
            return sum(not packet.is_discard for packet in video_packets(container))
    except Exception:
        return 0


@dataclass
class PacketScan:
    """What one pass over a video's packets (no decoding) tells."""
    pts: list  # presentation timestamps, in decoding order
    keys: list  # keyframes' presentation timestamps
    why_not: str  # why the packets cannot number the frames exactly ('' if they can)
    container: str
    # a packet after a keyframe in decoding order but shown before it (an open GOP's
    # leading picture), e.g. x264's open-gop=1 or HEVC's CRA pictures
    leading_pictures: bool = False

    @property
    def variable_rate(self) -> bool:
        return rate_varies(self.pts)


def rate_varies(pts) -> bool:
    """Whether frames last different times: a gap between consecutive timestamps differs
    from the typical one by more than a tenth of it (and more than one tick, the rounding
    of a millisecond time base: 33 and 34 ms at 29.97 fps are one rate)."""
    if len(pts) < 3:
        return False
    gaps = np.diff(np.sort(np.asarray(pts, dtype=np.int64)))
    typical = float(np.median(gaps))
    return bool(np.abs(gaps - typical).max() > max(1.0, 0.1 * typical))


def scan_packets(path: Path, formats: Optional[set] = None) -> PacketScan:
    """`formats`: read no packets of a container not among them (frame_index needs none)."""
    import av

    pts, keys, why, last_key, leading = [], [], "", None, False
    try:
        with av.open(str(path)) as container:
            name = container.format.name
            if formats is not None and not seekable(name, formats):
                return PacketScan([], [], f"{name} container", name, False)
            for packet in video_packets(container):
                if packet.pts is None:
                    why = why or "a packet without a timestamp"
                    continue
                if packet.is_discard or packet.is_corrupt:
                    why = why or "packets marked discard or corrupt"
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys.append(packet.pts)
                    last_key = packet.pts
                elif last_key is not None and packet.pts < last_key:
                    leading = True
    except Exception as e:
        return PacketScan([], [], f"its packets could not be read ({first_line(e)})", "", False)
    return PacketScan(pts, keys, why, name, leading)


def seekable(container: str, formats: set) -> bool:
    """Whether FFmpeg's name for a container ("mov,mp4,m4a,...") is one of `formats`."""
    return any(name in formats for name in container.split(","))


def frame_index(path: Path, num_frames: int, scan: Optional[PacketScan] = None) -> tuple[Optional[FrameIndex], str]:
    """The video's FrameIndex, read from its packets (no decoding; `scan`: read already),
    or (None, why not) when its packets cannot number its frames exactly (a packet without
    a timestamp, two with the same, packets the demuxer marks to discard, a count that is
    not the container's frame count, fewer than two keyframes) or its container is not one
    that FFmpeg seeks in by an index of its frames (MP4/MOV and Matroska/WebM: seeks in
    MPEG-TS landed past the keyframe asked for, so every segment decoded from the start)."""
    scan = scan or scan_packets(path, SEEKABLE_FORMATS)
    if scan.container and not seekable(scan.container, SEEKABLE_FORMATS):
        return None, f"{scan.container} container"
    if scan.why_not:
        return None, scan.why_not
    pts, keys = scan.pts, scan.keys
    order = np.sort(np.asarray(pts, dtype=np.int64))
    if len(order) != num_frames:
        return None, f"{len(order)} packets for {num_frames} frames"
    if len(order) > 1 and (np.diff(order) <= 0).any():
        return None, "two packets with one timestamp"
    if len(keys) < 2:
        return None, "fewer than two keyframes"
    return FrameIndex(order, np.unique(np.asarray(keys, dtype=np.int64)), scan.leading_pictures), ""


READERS = {"pyav": PyAVReader, "decord": DecordReader}
