"""Long videos decoded in segments: each segment starts at a keyframe, its frames are
numbered by the container's index and checked against it, and the features are those of
the video decoded in one piece."""

from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, synthetic_frames, tiny_args, write_frames
from extractor.clips import clip_starts, needed_frames, segment_clips
from extractor.decode.readers import PyAVReader, frame_index
from extractor.outputs import read_manifest

# Encodings whose decoders keep state across frames in different ways: B-frames with
# closed GOPs, open GOPs (frames after a keyframe that refer back past it), HEVC.
ENCODINGS = {
    "closed.mp4": ("libx264", {"g": "24", "bf": "3"}),
    "open_gop.mp4": ("libx264", {"x264-params": "keyint=24:open-gop=1:bframes=3:b-pyramid=normal"}),
    "hevc.mp4": ("libx265", {"x265-params": "keyint=20:open-gop=1:bframes=4:log-level=error"}),
    "closed.mkv": ("libx264", {"g": "24", "bf": "3"}),  # Matroska: no frame count, frames counted from packets
}


def planes_of(path, indices, start=None):
    reader = PyAVReader(path, 2, True)
    try:
        frames = {i: np.concatenate([p.ravel() for p in planes]).copy() for i, planes, _ in reader.frames(indices, start)}
        return frames, reader.fell_back
    finally:
        reader.close()


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    d = tmp_path_factory.mktemp("segments")
    frames = synthetic_frames(150, 48, 64)
    for name, (codec, options) in ENCODINGS.items():
        write_frames(d / name, frames, codec=codec, options=options)
    rng = np.random.default_rng(3)  # a variable frame rate: gaps of 20 to 60 ms
    write_frames(d / "vfr.mp4", frames, pts_ms=np.cumsum(rng.integers(20, 60, len(frames))) - 20,
                 options={"g": "24", "bf": "2"})
    write_frames(d / "stream.ts", frames, options={"g": "24"})
    write_frames(d / "rotated.mp4", frames, rotation=-90, options={"g": "24", "bf": "2"})
    write_frames(d / "hevc10.mp4", frames, codec="libx265", pix_fmt="yuv420p10le",
                 options={"x265-params": "keyint=24:log-level=error"})
    return d


@pytest.mark.parametrize("name", [*ENCODINGS, "vfr.mp4", "rotated.mp4", "hevc10.mp4"])
def test_a_segment_has_the_frames_of_a_decoding_from_the_start(encoded, name):
    """Every frame of segments that begin anywhere (on a keyframe, just after one, in the
    last GOP) is the frame of the same number decoded from the start, byte for byte, and
    no seek fell back to decoding from the start."""
    path = encoded / name
    n = PyAVReader(path).info.num_frames
    index, why = frame_index(path, n)
    assert index is not None, why
    assert len(index.keyframes) >= 5 and len(index.pts) == n
    whole, _ = planes_of(path, np.arange(n))
    seeks = 0
    for first in [1, 23, 24, 25, 47, 70, 96, 121, n - 17]:
        last = min(n - 1, first + 30)
        start = index.start_of(first, last)
        seeks += start is not None
        got, fell_back = planes_of(path, np.arange(first, last + 1, 2), start)
        assert fell_back == ""
        assert sorted(got) == list(range(first, last + 1, 2))
        for i, frame in got.items():
            assert np.array_equal(frame, whole[i]), (name, first, i)
    assert seeks >= 7


def test_frames_out_of_step_with_the_index_fall_back_to_decoding_from_the_start(encoded):
    """A seek that would give the wrong frame numbers (the index shifted by one) is caught
    on the first frame: the segment is decoded from the start instead, with the same frames."""
    path = encoded / "closed.mp4"
    n = PyAVReader(path).info.num_frames
    index, _ = frame_index(path, n)
    keyframe, pts = index.start_of(60, 90)
    whole, _ = planes_of(path, np.arange(91))
    got, fell_back = planes_of(path, np.arange(60, 91), (keyframe, pts + 1))
    assert "decoding from the start from frame 60" in fell_back
    assert all(np.array_equal(got[i], whole[i]) for i in range(60, 91))


def test_only_files_whose_packets_number_their_frames_are_split(encoded, tmp_path, monkeypatch):
    from extractor.decode import readers

    path = encoded / "stream.ts"
    n = PyAVReader(path).info.num_frames
    with monkeypatch.context() as m:  # a container it does not split: no packet is read
        m.setattr(readers, "video_packets", lambda container: pytest.fail("packets read"))
        assert frame_index(path, n) == (None, "mpegts container")
    one_keyframe = tmp_path / "one_keyframe.mp4"
    write_frames(one_keyframe, synthetic_frames(40, 48, 64), options={"g": "1000"})
    assert frame_index(one_keyframe, 40) == (None, "fewer than two keyframes")
    assert frame_index(encoded / "closed.mp4", 149)[1] == "150 packets for 149 frames"


@pytest.mark.parametrize("n, clip_len, stride, size", [(9000, 16, 4, 1500), (9000, 16, 16, 1500), (3001, 16, 4, 1500),
                                                        (400, 16, 4, 40), (100, 16, 32, 30)])
def test_segments_cover_every_clip_once_in_even_runs(n, clip_len, stride, size):
    starts = clip_starts(n, clip_len, stride)
    parts = segment_clips(starts, clip_len, size)
    assert parts[0][0] == 0 and parts[-1][1] == len(starts)
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    lengths = [end - first for first, end in parts]
    assert max(lengths) - min(lengths) <= 1
    assert len(parts) == min(len(starts), -(-(starts[-1] + clip_len) // size))
    # the frames the segments decode are the video's, each segment's once
    needed = np.unique(np.concatenate([needed_frames(starts[a:b], clip_len, n) for a, b in parts]))
    assert np.array_equal(needed, needed_frames(starts, clip_len, n))


def test_segments_begin_just_after_a_keyframe_where_one_is_near():
    """Given the video's keyframes, a segment begins with the first clip at or after a
    keyframe within a third of a segment of its even place, so that a decoder's seek does
    not decode up to a GOP of frames no clip uses; the segments still cover every clip once."""
    keyframes = np.array([0, 250, 500, 660, 910])  # the hacs-like bench video's (x264 defaults)
    for stride in (16, 4):
        starts = clip_starts(1000, 16, stride)
        even, aligned = segment_clips(starts, 16, 250), segment_clips(starts, 16, 250, keyframes)
        assert len(aligned) == len(even) == 4
        assert aligned[0][0] == 0 and aligned[-1][1] == len(starts)
        assert all(a[1] == b[0] for a, b in zip(aligned, aligned[1:]))

        def unused(parts):  # frames decoded from the keyframe before each segment up to it
            return sum(starts[a] - keyframes[keyframes <= starts[a]].max() for a, _ in parts)

        assert unused(aligned) < 4 * stride < unused(even)
    # no keyframe near: the even split stays
    assert segment_clips(starts, 16, 250, np.array([0])) == segment_clips(starts, 16, 250)


def test_videos_claimed_at_the_tail_of_the_queue_are_split_finer():
    """With fewer videos left per worker than it has decoders, a claimed video is asked to
    split into segments TAIL_SPLIT times shorter; before that, at --segment_frames; never
    with the decord reader (it does not seek) or with segments off."""
    import threading
    from types import SimpleNamespace

    from extractor.decode.plan import TAIL_SPLIT, DecodePlan
    from extractor.decode.source import FrameSource
    from extractor.pipeline import VideoJob

    plan = DecodePlan(cpu_decoders=5, nvdec_sessions=0)
    assert plan.split_frames() == 1500 and plan.split_frames(tail=True) == 1500 // TAIL_SPLIT < 1500
    assert DecodePlan(5, 0, reader="decord").split_frames(tail=True) == 0
    assert DecodePlan(5, 0, segment_frames=0).split_frames(tail=True) == 0
    lefts = iter([9.0, 5.0, 4.5, None, 0.0])
    source = SimpleNamespace(exhausted=False, _short_of_frames=lambda: True, clips_held=0, clip_budget=100,
                             starting=[], model_rate=400.0, plan=plan, cpu=[None] * 5, sessions=[], next_vid=0,
                             claim_video=lambda: (Path("v.mp4"), None, next(lefts)), new_job=VideoJob,
                             held_lock=threading.Lock())
    got = []
    for _ in range(5):
        job = FrameSource._claim(source)
        source.starting.clear()
        got.append(job.segment_frames)
    assert got == [1500, 1500, 1500 // TAIL_SPLIT, 1500, 1500 // TAIL_SPLIT]  # None: a video tried again


def split_against_whole(encoded, tmp_path, names, segment_frames: int) -> tuple[dict, str]:
    """The CLI with three decoder processes on copies of `names`, without segments and with
    --segment_frames `segment_frames`: asserts the features are the same; returns the
    split run's manifest notes (video -> decoder_note) and its output."""
    data = tmp_path / "videos"
    data.mkdir()
    for name in names:
        (data / name).write_bytes((encoded / name).read_bytes())
    outs = {}
    for name, frames in (("whole", 0), ("split", segment_frames)):
        outs[name] = tmp_path / name
        res = run_cli(*tiny_args(data, outs[name], "--data_set", "hacs", "--cpu_decoders", "3",
                                 "--segment_frames", str(frames)))
        assert res.returncode == 0, res.stdout + res.stderr
    for f in sorted(outs["whole"].glob("*.npy")):
        whole, split = np.load(f), np.load(outs["split"] / f.name)
        assert whole.shape == split.shape == (9, 128)
        assert np.abs(whole - split).max() <= 1e-6 * np.abs(whole).max()
    return {v: e.get("decoder_note", "") for v, e in read_manifest(outs["split"]).items()}, res.stdout


def test_split_videos_give_the_features_of_whole_ones(encoded, tmp_path):
    """The CLI with segments of 30 frames and three decoder processes: the same features
    as without segments, and the manifest says which videos were split and why the
    MPEG-TS one was not."""
    notes, out = split_against_whole(encoded, tmp_path, ("open_gop.mp4", "hevc.mp4", "vfr.mp4", "stream.ts"), 30)
    assert "segments of 30 frames" in out
    assert notes == {"open_gop.mp4": "5 segments", "hevc.mp4": "5 segments", "vfr.mp4": "5 segments",
                     "stream.ts": "not split into segments: mpegts container"}


def test_videos_at_the_tail_of_the_queue_are_split_and_give_the_features_of_whole_ones(encoded, tmp_path):
    """Four 150-frame videos, three decoder processes, --segment_frames 400: the first
    video claimed is decoded whole (150 < 2 x 400), the three claimed with fewer videos
    left than decoders are split into segments of about 400 / TAIL_SPLIT frames; the
    features are those of whole decoding."""
    notes, out = split_against_whole(encoded, tmp_path, ("closed.mp4", "open_gop.mp4", "hevc.mp4", "vfr.mp4"), 400)
    assert "segments of 400 frames (66 at the end of the queue)" in out
    assert sorted(notes.values()) == ["", "3 segments", "3 segments", "3 segments"], notes


def test_a_decoder_that_dies_on_a_segment_gives_the_video_one_more_try(encoded, tmp_path):
    """Every segment's decoder of the video dies on the first attempt: the video is
    reported once as tried again, then done in segments on the second attempt."""
    from conftest import cli_env

    data = tmp_path / "videos"
    data.mkdir()
    (data / "closed.mp4").write_bytes((encoded / "closed.mp4").read_bytes())
    env = cli_env(FEAT_EXTRACTION_KILL_WORKER_ON="closed.mp4:1:crash", OMP_NUM_THREADS="1")
    res = run_cli(*tiny_args(data, tmp_path / "out", "--data_set", "hacs", "--cpu_decoders", "3",
                             "--segment_frames", "30"), env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stderr.count("its decoder process died") == 1
    assert read_manifest(tmp_path / "out")["closed.mp4"]["decoder_note"] == "5 segments"
    assert np.load(tmp_path / "out" / "closed.npy").shape == (9, 128)


def test_a_worker_holds_about_eight_seconds_of_its_models_work():
    """The claim budget: START_CLIPS until the model has run for a second of its own time,
    then its rate (clips per second of model time, however long it waited for frames)
    times HELD_SECONDS; the count of clips held goes down with launches and drops."""
    from extractor import pipeline
    from extractor.decode.pacing import HELD_SECONDS, START_CLIPS
    from extractor.decode.source import FrameSource

    class Source:
        clips_held, clip_budget, model_rate = 0, START_CLIPS, 0.0
        know_model_rate = FrameSource.know_model_rate

        def hold(self, clips):
            self.clips_held += clips

    source = Source()
    pace = pipeline.ClaimPace(source)
    source.hold(5000)  # the frame source counts a video's clips when it opens
    for i in range(20):  # batches of 64 clips, 1/8 s of model time each: 512 clips/s
        pace.launching()
        pace.launched(64)
        pace.ran(64, 0.125)
        assert (source.model_rate > 0) == (i >= 7)
        assert source.clip_budget == (START_CLIPS if i < 7 else 512 * HELD_SECONDS)
    pace.dropped(100)
    assert source.clips_held == 5000 - 20 * 64 - 100 and pace.total == 20 * 64


def test_a_worker_is_short_of_frames_until_they_make_a_quarter_second_of_its_models_work():
    """Once the model's rate is known, a worker claims videos for its free decoders while the
    frames queued for its main thread make fewer clips than the model runs in QUEUED_SECONDS
    (a clip takes min(stride, 16) new frames). A count of chunks, as before, said plenty at
    720p stride 16 when 8 of NVDEC's 32-frame chunks (16 clips, 1/25 s of the model) were
    queued, and decoders stood idle. Before the rate is known, chunks are still counted."""
    import queue
    import threading
    from types import SimpleNamespace

    from extractor.decode.pacing import QUEUED_SECONDS
    from extractor.decode.source import FrameSource

    def source(stride, rate):
        return SimpleNamespace(queue=queue.Queue(), held_lock=threading.Lock(), frames_queued=0, model_rate=rate,
                               stride=stride, clip_len=16, cpu=[None] * 15, started=True)

    def fill(s, chunks, frames=32):
        for _ in range(chunks):
            FrameSource.put(s, ("frames", None, np.arange(frames), None))

    hacs = source(16, 400.0)
    plenty = QUEUED_SECONDS * 400 * 16  # frames
    chunks = -int(-plenty // 32)  # the fewest 32-frame chunks that are plenty
    fill(hacs, chunks - 1)
    FrameSource.put(hacs, ("open", None))  # other events do not count
    assert hacs.frames_queued == (chunks - 1) * 32 and FrameSource._short_of_frames(hacs)
    fill(hacs, 1)
    assert not FrameSource._short_of_frames(hacs)
    while not hacs.queue.empty():
        FrameSource.get(hacs)
    assert hacs.frames_queued == 0 and FrameSource._short_of_frames(hacs)

    charades = source(4, 400.0)  # 4 new frames a clip: a quarter of hacs' frames is plenty
    fill(charades, int(QUEUED_SECONDS * 400 * 4 // 32) + 1)
    assert not FrameSource._short_of_frames(charades)

    starting = source(16, 0.0)  # before the rate is known: more chunks than half the processes
    fill(starting, 7, frames=2)
    assert FrameSource._short_of_frames(starting)
    fill(starting, 1, frames=2)
    assert not FrameSource._short_of_frames(starting)
    starting.started = False  # before the worker is ready, each free decoder gets a video
    assert FrameSource._short_of_frames(starting)


def test_claims_wait_for_videos_still_starting_only_until_the_models_rate_is_known():
    """Before the model has run (one claim at a time, and at most STARTING videos without
    frames) a late worker holds little; after, a worker short of frames claims one video for
    each free decoder at once (NVDEC sessions freed together waited for each other's first
    frames: 'claims not started yet' was a third of their idle time, H100 2026-11-27)."""
    import threading
    from types import SimpleNamespace

    from extractor.decode.plan import DecodePlan
    from extractor.decode.pacing import STARTING
    from extractor.decode.source import FrameSource
    from extractor.pipeline import VideoJob

    def source(measured):
        return SimpleNamespace(exhausted=False, _short_of_frames=lambda: True, clips_held=0, clip_budget=10 ** 6,
                               starting=[], model_rate=400.0 if measured else 0.0, plan=DecodePlan(4, 14),
                               cpu=[None] * 4,
                               sessions=[None] * 14, next_vid=0, claim_video=lambda: (Path("v.mp4"), None, 99.0),
                               new_job=VideoJob, held_lock=threading.Lock(), refused="")

    before = source(measured=False)
    assert FrameSource._claim(before) is not None and FrameSource._claim(before) is None
    assert before.refused == "claims not started yet"
    after = source(measured=True)
    claimed = [FrameSource._claim(after) for _ in range(3 * STARTING)]
    assert all(job is not None for job in claimed) and len(after.starting) == 3 * STARTING


def test_while_the_model_compiles_each_nvdec_session_gets_a_probed_video_waiting_in_its_inbox(encoded):
    """Before the worker is ready, the prober opens a video for each NVDEC session (it waits
    in the session's inbox until the sessions start) and each decoder process starts one;
    a session that then cannot start hands its video to the CPU decoders, which decode it
    whole. (At the start of a hacs-like run, claims one probe at a time were half of the
    sessions' idle time: H100, 2026-11-27.) Real decoder processes, sessions never started."""
    import time

    from extractor.decode.plan import DecodePlan
    from extractor.decode.source import FrameSource
    from extractor.pipeline import VideoJob

    todo = [encoded / n for n in ("closed.mp4", "vfr.mp4", "rotated.mp4", "closed.mkv")]
    claims, events = list(todo), []
    source = FrameSource(DecodePlan(cpu_decoders=1, nvdec_sessions=2, chunk_frames=200), 16, 16, 60.0,
                         lambda: (claims.pop(0), None, None) if claims else None, events.append,
                         lambda path: VideoJob(path, path.name), torch_device("cpu"))
    try:
        deadline = time.monotonic() + 60
        while source.free_sessions and time.monotonic() < deadline:
            time.sleep(0.05)
        waiting = [s.inbox.queue[0] for s in source.sessions if not s.inbox.empty()]
        assert len(waiting) == 2 and all(job.info is not None and job.decoder == "nvdec" for job in waiting)
        assert all(s.inbox.qsize() == 1 for s in source.sessions)  # one video each, no more
        assert not source.started and source.idle_sessions == 0
        broken = source.sessions[0]
        source.session_broken(broken, "no CUDA here")
        assert broken not in source.sessions and broken.inbox.empty()
        decoded, deadline = set(), time.monotonic() + 60
        while waiting[0].name not in decoded and time.monotonic() < deadline:
            if source.queue.empty():
                time.sleep(0.01)
                continue
            event = source.get()
            assert event[0] in ("open", "frames", "decoded"), event
            if event[0] == "frames":
                event[3].discard()
            elif event[0] == "decoded":
                decoded.add(event[1].name)
        assert waiting[0].frames_done == len(waiting[0].needed) and waiting[1].name not in decoded
        assert any("could not start" in e.get("msg", "") for e in events)
    finally:
        source.close()


def torch_device(kind):
    import torch

    return torch.device(kind)


def test_a_segment_of_a_matroska_file_does_not_count_its_packets_again(encoded, monkeypatch):
    """Matroska has no frame count, so opening one counts its packets; a segment's reader is
    given the count the worker already has instead of scanning the file once per segment."""
    from extractor.decode import readers

    path = encoded / "closed.mkv"
    n = PyAVReader(path).info.num_frames
    monkeypatch.setattr(readers, "count_packets", lambda path: pytest.fail("packets counted again"))
    reader = PyAVReader(path, 1, True, n)
    assert reader.info.num_frames == n == 150
    reader.close()


class FakeNvdec:
    """A stand-in for PyNvVideoCodec's SimpleDecoder over a clean file whose frames, in
    display order, have the timestamps `pts` shifted by `shift` (2.2.4 ignores an MP4's edit
    list: two frames early on x264 files): seek_to_index lands where `landing` says (index
    0 at the start), and `dropped` frames never come out (a decoder that skips a broken
    frame)."""

    class Frame:
        def __init__(self, pts):
            self.pts = pts

        def getPTS(self):
            return self.pts

    def __init__(self, pts, landing, dropped=(), shift=0):
        self.frames = [self.Frame(int(p) + shift) for i, p in enumerate(pts) if i not in dropped]
        self.landing, self.position, self.shift = landing, 0, shift

    def seek_to_index(self, index):
        self.position = self.landing(index) if index else 0

    def get_batch_frames(self, n):
        out = self.frames[self.position:self.position + n]
        self.position += len(out)
        return out


def segment_of(index, first, last, decoder, chunk=8):
    """(frame number, timestamp in the index's terms) of each frame segment_batches yields."""
    from extractor.decode.nvdec import segment_batches, timestamp_shift

    keyframe_pts, pts = index.start_of(first, last)
    keyframe = int(index.frame_at(keyframe_pts))
    got = []
    shift = timestamp_shift(decoder, int(index.pts[0]))
    assert shift == decoder.shift
    for ids, frames in segment_batches(decoder, first, keyframe, pts, chunk, shift):
        assert len(ids) == len(frames) <= chunk
        got += [(int(i), f.pts - decoder.shift) for i, f in zip(ids, frames)]
    return got


@pytest.mark.parametrize("shift", [0, -1024, 512])
@pytest.mark.parametrize("landing", ["keyframe", "exact", "earlier_keyframe"])
def test_nvdec_numbers_a_segments_frames_by_their_timestamps(encoded, landing, shift):
    """Wherever NVDEC's seek lands at or before the segment (its keyframe, the frame itself,
    a keyframe before), and whatever constant its timestamps are shifted by (measured on
    frame 0), the frames it returns are numbered by the index and checked frame by frame:
    exactly frames first..last, each with its own timestamp."""
    path = encoded / "open_gop.mp4"
    index, _ = frame_index(path, 150)
    keyframes = index.frame_at(index.keyframes)
    lands = {"keyframe": lambda i: i, "exact": lambda i: 70,
             "earlier_keyframe": lambda i: int(keyframes[np.searchsorted(keyframes, i) - 1])}[landing]
    got = segment_of(index, 70, 100, FakeNvdec(index.pts, lands, shift=shift))
    assert got == [(i, int(index.pts[i])) for i in range(70, 101)]


def test_nvdec_out_of_step_stops_at_the_first_wrong_frame(encoded):
    """A seek that lands past the segment delivers nothing; a frame missing midway stops
    the segment after the frames before it (OutOfStep): never a frame under a wrong number."""
    from extractor.decode.nvdec import OutOfStep

    index, _ = frame_index(encoded / "open_gop.mp4", 150)
    with pytest.raises(OutOfStep, match="frame 70 has timestamp"):
        segment_of(index, 70, 100, FakeNvdec(index.pts, lambda i: 71))
    delivered = []
    with pytest.raises(OutOfStep, match="frame 85 has timestamp"):
        from extractor.decode.nvdec import segment_batches

        keyframe_pts, pts = index.start_of(70, 100)
        decoder = FakeNvdec(index.pts, lambda i: i, dropped={85})
        for ids, frames in segment_batches(decoder, 70, int(index.frame_at(keyframe_pts)), pts, 8, 0):
            delivered += [(int(i), f.pts) for i, f in zip(ids, frames)]
    assert delivered == [(i, int(index.pts[i])) for i in range(70, 85)]
    with pytest.raises(OutOfStep, match="the stream ended before frame 140"):
        segment_of(index, 140, 149, FakeNvdec(index.pts[:140], lambda i: i))


def test_what_nvdec_did_not_deliver_a_cpu_decoder_finishes_from_the_index(encoded):
    """NVDEC stopped after frame 84 of a segment of frames 60..120: the segment goes to the
    front of the CPU decoders' backlog with the frames still needed, reached from the
    keyframe before frame 85; the video's other segments are no longer NVDEC's; a warning
    and a note in the manifest. The CPU reader then gives exactly those frames, as decoded from the start."""
    import threading
    from types import SimpleNamespace

    from extractor.decode.source import FrameSource
    from extractor.pipeline import VideoJob

    path = encoded / "closed.mp4"
    index, _ = frame_index(path, 150)
    video = VideoJob(path, "closed.mp4", index=index)
    part, other = (VideoJob(path, root=video, for_nvdec=True) for _ in range(2))
    video.parts = [part, other]
    part.needed = np.arange(60, 121)
    part.start = index.start_of(60, 120)
    events = []
    source = SimpleNamespace(report=events.append, session_lock=threading.Lock(), backlog=[other],
                             _wake=lambda: None)
    FrameSource.nvdec_stopped(source, part, 84, "frame 85 has timestamp 1, the index says 2")
    assert source.backlog == [part, other] and not part.for_nvdec and not other.for_nvdec
    assert np.array_equal(part.needed, np.arange(85, 121)) and video.nvdec_refused
    keyframe, pts = index.start_of(85, 120)
    assert part.start[0] == keyframe and np.array_equal(part.start[1], pts) and keyframe < index.pts[85]
    assert len(events) == 1 and "NVDEC stopped after frame 84 of a segment" in events[0]["msg"]
    assert "NVDEC stopped after frame 84 of a segment" in video.decoder_note
    whole, _ = planes_of(path, np.arange(121))
    rest, fell_back = planes_of(path, part.needed, part.start)
    assert fell_back == "" and sorted(rest) == list(range(85, 121))
    assert all(np.array_equal(rest[i], whole[i]) for i in rest)


@pytest.mark.parametrize("name, leading", [("closed.mp4", False), ("open_gop.mp4", True), ("hevc.mp4", True),
                                           ("vfr.mp4", False), ("stream.ts", False), ("closed.mkv", False)])
def test_open_gops_are_found_in_the_packets_and_kept_from_nvdec(encoded, name, leading):
    """A stream with frames decoded after a keyframe but shown before it (x264's open-gop,
    HEVC's CRA pictures) is found from its packets' timestamps alone; NVDEC, whose pixels
    differ from FFmpeg's on those frames, does not get it, whole or in segments."""
    import threading
    from types import SimpleNamespace

    from extractor.decode.readers import scan_packets
    from extractor.decode.gpu import nvdec_cannot
    from extractor.decode.source import FrameSource
    from extractor.pipeline import VideoJob

    path = encoded / name
    assert scan_packets(path).leading_pictures == leading
    info = PyAVReader(path, 1, True).info
    info.leading_pictures = scan_packets(path).leading_pictures
    assert ("open GOP" in nvdec_cannot(info)) == leading
    if name == "stream.ts":
        return
    index, _ = frame_index(path, info.num_frames)
    assert index.leading_pictures == leading
    source = SimpleNamespace(sessions=["a session"], plan=SimpleNamespace(segment_frames=40), clip_len=16,
                             new_job=lambda p: VideoJob(p), next_vid=0, session_lock=threading.Lock(), backlog=[])
    video = VideoJob(path, info=info)
    video.starts = clip_starts(info.num_frames, 16, 16)
    FrameSource._split(source, video, index)
    assert len(video.parts) >= 3 and source.backlog == video.parts
    assert all(part.for_nvdec != leading for part in video.parts)


def nvdec_feeding_source(free_sessions, backlog, cpu_decoders, short_of_frames):
    """What FrameSource._feed_nvdec_sessions reads and writes of a frame source, with a
    prober, no videos to claim and `short_of_frames` standing in for the main thread's queue."""
    import threading
    from types import SimpleNamespace

    return SimpleNamespace(prober=SimpleNamespace(job=None), session_lock=threading.Lock(), free_sessions=free_sessions,
                           probing=[], backlog=backlog, cpu=[None] * cpu_decoders, nvdec_idle={}, idle_sessions=0,
                           idle_why="", t_idle=0.0, refused="", _claim=lambda: None, _short_of_frames=short_of_frames,
                           started=True)


def test_idle_nvdec_sessions_are_counted_by_why_no_video_was_claimed(monkeypatch):
    """The worker's summary says how long its NVDEC sessions sat idle and why no video was
    claimed for them: session-seconds, attributed to the reason in force since the last
    dispatch."""
    from extractor.decode import source as source_module
    from extractor.progress import nvdec_use

    clock = [100.0]
    monkeypatch.setattr(source_module.time, "perf_counter", lambda: clock[0])
    queued = [True]
    source = nvdec_feeding_source(["a", "b"], [], 4, lambda: not queued[0])
    feed = source_module.FrameSource._feed_nvdec_sessions
    feed(source)  # two idle sessions: the main thread has frames enough
    clock[0], queued[0], source.refused = 103.0, False, "no videos left"
    feed(source)  # 2 x 3 s to "frames enough queued"; now the queue is empty
    clock[0] = 104.0
    feed(source)
    idle = {why: s for why, s in source.nvdec_idle.items() if s}
    assert idle == {"frames enough queued": 6.0, "no videos left": 2.0}
    line = nvdec_use({"sessions": 2, "busy_s": 2.0, "idle_s": source.nvdec_idle, "count": 4, "total_s": 0.8,
                      "longest_s": 0.3}, 5.0)
    assert line == (" | NVDEC sessions busy 20% of the time; idle for want of a claim: frames enough queued 75%, "
                    "no videos left 25% | probes for NVDEC: 4, 0.20s on average, longest 0.30s")
    spent = {"opening files": 0.1, "decoding": 1.0, "launching conversions": 0.3, "waiting for the GPU": 0.6,
             "waiting for the main thread": 0.0}
    line = nvdec_use({"sessions": 2, "busy_s": 2.0, "spent": spent, "idle_s": {}, "count": 0, "total_s": 0.0,
                      "longest_s": 0.0}, 5.0)
    assert line.startswith(" | NVDEC sessions busy 20% of the time (decoding 50%, waiting for the GPU 30%, "
                           "launching conversions 15%, opening files 5%) | probes")


def test_segments_nvdec_may_take_are_not_counted_as_videos_it_declined():
    """Idle NVDEC sessions beside a backlog of segments they may take (held back because the
    main thread has frames enough) are idle for that reason, not for videos NVDEC declined;
    a backlog of as many jobs NVDEC declined as there are CPU decoders is that reason."""
    from types import SimpleNamespace

    from extractor.decode.source import FrameSource

    def idle_reason(backlog):
        source = nvdec_feeding_source(["a"], backlog, 2, lambda: False)
        FrameSource._feed_nvdec_sessions(source)
        return source.idle_why

    segment, declined = SimpleNamespace(for_nvdec=True), SimpleNamespace(for_nvdec=False)
    assert idle_reason([segment] * 5 + [declined]) == "frames enough queued"
    assert idle_reason([segment, declined, declined]) == "videos NVDEC declined waiting"


def test_nvdec_frames_are_exchanged_once_each_with_the_stream_or_through_torch_when_they_take_no_stream():
    """nv12_batch: with a stream, each frame's DLPack exchange is one __dlpack__(stream=...)
    call (torch.from_dlpack first tries keywords PyNvVideoCodec rejects, and catches the
    errors: the largest holder of the worker's GIL); frames whose exchange takes no stream
    go through torch.from_dlpack. Same batch either way."""
    import torch

    from extractor.decode.nvdec import nv12_batch

    planes = [torch.full((6, 4, 1), i, dtype=torch.uint8) for i in range(3)]
    asked = []

    class Frame:  # PyNvVideoCodec's frames: __dlpack__(stream) only, and (rows, width, 1)
        def __init__(self, t):
            self.t = t

        def __dlpack__(self, stream=None):
            asked.append(stream)
            return self.t.__dlpack__()

        def __dlpack_device__(self):
            return self.t.__dlpack_device__()

    class Positional(Frame):  # an exchange that takes no keywords
        def __dlpack__(self, *args):
            if args:
                raise TypeError("no stream here")
            asked.append("torch")
            return self.t.__dlpack__()

    want = torch.stack([p.squeeze(-1) for p in planes])
    assert torch.equal(nv12_batch([Frame(p) for p in planes], 7), want) and asked == [7, 7, 7]
    asked.clear()
    assert torch.equal(nv12_batch([Positional(p) for p in planes], 7), want) and asked == ["torch"] * 3


def test_timed_batches_pass_through_and_count_the_decoders_time(encoded):
    """nvdec.timed (an NVDEC session's account of its decoder's calls): the same batches, an
    error of the decoder raised as it was, its time counted under "decoding"."""
    from extractor.decode.nvdec import SPENT, OutOfStep, segment_batches, timed, whole_video_batches

    index, _ = frame_index(encoded / "open_gop.mp4", 150)
    spent = dict.fromkeys(SPENT, 0.0)
    plain = [ids.tolist() for ids, _ in whole_video_batches(FakeNvdec(index.pts, lambda i: i), 150, 149, 32)]
    counted = [ids.tolist() for ids, _ in timed(whole_video_batches(FakeNvdec(index.pts, lambda i: i), 150, 149, 32),
                                                 spent)]
    assert counted == plain and len(plain) == 5 and spent["decoding"] > 0
    assert sum(spent.values()) == spent["decoding"]
    keyframe_pts, pts = index.start_of(70, 100)
    seeking = segment_batches(FakeNvdec(index.pts, lambda i: 71), 70, int(index.frame_at(keyframe_pts)), pts, 8, 0)
    with pytest.raises(OutOfStep):
        list(timed(seeking, spent))


def test_an_nvdec_session_delivers_a_whole_video_and_accounts_for_its_time(monkeypatch):
    """NvdecSession.decode on the CPU, with stand-ins for PyNvVideoCodec's decoder (frames
    as tensors), the CUDA event and the colour conversion: every needed frame is delivered
    once, in order, the video is reported decoded, and the session's busy time is split
    (nvdec.SPENT) with decoding, launching conversions and the waits all counted."""
    import threading
    import time as time_module
    from types import SimpleNamespace

    import torch

    from extractor.decode import nvdec
    from extractor.decode.common import VideoInfo
    from extractor.decode.plan import DecodePlan
    from extractor.pipeline import VideoJob

    class Decoder:
        def __init__(self, count):
            self.frames, self.position = [torch.full((6, 4), i, dtype=torch.uint8) for i in range(count)], 0

        def get_batch_frames(self, n):
            time_module.sleep(0.002)
            out = self.frames[self.position:self.position + n]
            self.position += len(out)
            return out

    class Event:
        def record(self, stream=None):
            pass

        def synchronize(self):
            time_module.sleep(0.001)

    monkeypatch.setattr(nvdec.torch.cuda, "Event", Event)
    events = []
    source = SimpleNamespace(stopping=False, put=events.append, report=lambda ev: None,
                             delivered=lambda job, n, by: setattr(job, "frames_done", job.frames_done + n),
                             nvdec_stopped=lambda job, delivered, reason: events.append(("stopped", reason)))
    maker = SimpleNamespace(from_nv12=lambda batch, info: batch.float())
    session = nvdec.NvdecSession(0, torch.device("cpu"), source, DecodePlan(1, 1, chunk_frames=8), maker)
    session.stream, session.stream_ptr = None, None
    monkeypatch.setattr(session, "_open", lambda job, seeking: setattr(session, "decoder", Decoder(30)))
    job = VideoJob(Path("v.mp4"), "v.mp4", info=VideoInfo(30, 30.0, 4, 4), needed=np.arange(0, 28))
    job.t_decode = time_module.perf_counter()

    def main_thread_takes_one_late():  # the session may hold 3 chunks: the 4th waits for this
        while sum(e[0] == "frames" for e in events) < 3:
            time_module.sleep(0.001)
        time_module.sleep(0.1)  # (the session's first batches, in a fresh process, took up to 12 ms more)
        session.room.release()

    taker = threading.Thread(target=main_thread_takes_one_late)
    taker.start()
    session.decode(job)
    taker.join()
    chunks = [e for e in events if e[0] == "frames"]
    assert np.concatenate([e[2] for e in chunks]).tolist() == list(range(28)) and events[-1] == ("decoded", job)
    assert torch.equal(torch.cat([e[3].x[:, 0, 0] for e in chunks]), torch.arange(28).float())
    spent = session.spent
    assert set(spent) == set(nvdec.SPENT)
    assert spent["decoding"] > 0.006 and spent["waiting for the GPU"] > 0.003 and spent["launching conversions"] > 0
    assert spent["waiting for the main thread"] > 0.01
