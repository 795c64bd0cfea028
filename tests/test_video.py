import numpy as np
import pytest
import torch

from extractor.clips import clip_frame_indices, clip_starts, needed_frames
from extractor.decode.cpu_process import Ring
from extractor.decode.readers import DecordReader, PyAVReader
from extractor.decode.yuv import yuv420_to_rgb
from extractor.video import ClipAssembler


def test_clip_starts_follow_the_original_rule():
    assert clip_starts(40, 16, 4) == list(range(0, 25, 4))
    assert clip_starts(64, 16, 16) == [0, 16, 32, 48]
    assert clip_starts(16, 16, 4) == [0]
    assert clip_starts(10, 16, 4) == [0]  # shorter than a clip: one padded clip
    assert clip_starts(0, 16, 4) == []
    assert clip_frame_indices(0, 16, 10) == list(range(10)) + [9] * 6


@pytest.mark.parametrize("n, clip_len, stride, chunk", [
    (40, 16, 4, 7), (64, 16, 16, 32), (100, 8, 20, 5), (10, 16, 4, 3), (33, 4, 1, 32), (17, 16, 4, 1),
])
def test_assembler_gives_every_window_once_in_order(n, clip_len, stride, chunk):
    frames = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    starts = clip_starts(n, clip_len, stride)
    need = needed_frames(starts, clip_len, n)
    asm = ClipAssembler(starts, clip_len, n)
    got, held = {}, 0
    for a in range(0, len(need), chunk):
        idx = need[a:a + chunk]
        nums, clips = asm.push(idx, frames[torch.from_numpy(idx)])
        for num, clip in zip(nums, clips):
            assert clip.shape == (clip_len, 3, 2, 2)
            got[num] = clip[:, 0, 0, 0].tolist()  # (T, 3, S, S): the frame numbers
        held = max(held, asm.frames.shape[0])
    assert asm.done
    assert sorted(got) == list(range(len(starts)))
    for num, s in enumerate(starts):
        assert got[num] == clip_frame_indices(s, clip_len, n)
    assert held <= clip_len + chunk  # bounded memory: one clip span plus one chunk


def test_needed_frames_skip_gaps_between_clips():
    starts = clip_starts(100, 8, 20)
    need = needed_frames(starts, 8, 100)
    assert need.tolist() == [f for s in starts for f in range(s, s + 8)]
    assert needed_frames(clip_starts(40, 16, 4), 16, 40).tolist() == list(range(40))
    assert np.array_equal(needed_frames([0], 16, 10), np.arange(10))


def rgb_frames(reader, indices) -> np.ndarray:
    """What a reader delivers, made RGB as the worker does it (YUV planes through decode.yuv)."""
    out = []
    for _, planes, colour in reader.frames(indices):
        if colour is None:
            out.append(planes[0].copy())
        else:
            y, u, v = (torch.from_numpy(np.ascontiguousarray(p))[None] for p in planes)
            out.append(yuv420_to_rgb(y, u, v, colour)[0].numpy())
    reader.close()
    return np.stack(out)


def test_readers_give_decords_pixels(video_dir):
    """Both readers must give the original script's frames, decord's get_batch, pixel for
    pixel, for the frames clips need: PyAV's YUV planes once the worker has made them RGB."""
    import decord

    for name in ("long_one.mp4", "short one.mp4"):
        path = video_dir / name
        reference = decord.VideoReader(str(path))
        for stride in (4, 20):
            pyav = PyAVReader(path, 2)
            assert pyav.info.num_frames == len(reference) and pyav.info.fps == reference.get_avg_fps()
            assert pyav.info.layout == "yuv420p" and pyav.info.colour is not None  # the GPU converts these
            need = needed_frames(clip_starts(pyav.info.num_frames, 16, stride), 16, pyav.info.num_frames)
            want = reference.get_batch(need.tolist()).asnumpy()
            for reader in (pyav, DecordReader(path, 2)):
                assert np.array_equal(rgb_frames(reader, need), want)


def test_matroska_and_webm_without_a_frame_count_are_read_whole(tmp_path):
    """Matroska and WebM files carry no frame count (PyAV's stream.frames is 0, and no
    stream duration): the frames are counted from the packets, as decord does, and every
    one is read with decord's pixels. Before, such files failed with 'no video frames'."""
    import decord

    from conftest import synthetic_frames, write_frames

    for name, codec in (("x264.mkv", "libx264"), ("vp9.webm", "libvpx-vp9")):
        path = tmp_path / name
        write_frames(path, synthetic_frames(45, 48, 64), codec=codec)
        reference = decord.VideoReader(str(path))
        pyav = PyAVReader(path, 2)
        assert pyav.info.num_frames == len(reference) == 45
        assert np.array_equal(rgb_frames(pyav, np.arange(45)), reference.get_batch(list(range(45))).asnumpy())


def test_ring_hands_out_regions_in_order_and_waits_when_full():
    ring = Ring(100)
    spans = []
    for size in (40, 40):
        at = ring.place(size)
        ring.take(at, size)
        spans.append(at)
    assert spans == [0, 40]
    assert ring.place(30) is None  # 20 left at the end, nothing free at the start
    ring.give_back(0)
    assert ring.place(30) == 0  # wraps
    ring.take(0, 30)
    assert ring.place(15) is None and ring.place(10) == 30  # between the wrapped head and the oldest
    ring.give_back(40)
    ring.give_back(0)
    assert ring.place(100) == 0  # empty: the whole buffer
    with pytest.raises(RuntimeError):
        ring.take(0, 10)
        ring.give_back(5)  # given back out of order


def test_decoder_processes_run_below_the_worker_and_the_prober_does_not():
    """Decoders are niced so that the worker's threads, which feed the GPU, go first; the
    prober is not, since NVDEC sessions wait for its answers."""
    import os
    import time

    from extractor.decode.processes import CpuDecoder

    def nice(pid):  # field 19 of /proc/PID/stat; the process sets it as it starts
        for _ in range(100):
            value = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[16])
            if value != own:
                return value
            time.sleep(0.05)
        return value

    own = os.getpriority(os.PRIO_PROCESS, 0)
    decoder, prober = CpuDecoder(0, "pyav", 1 << 20, False), CpuDecoder(-1, "pyav", 1 << 20, False)
    try:
        assert nice(decoder.process.pid) == min(19, own + 5)
        time.sleep(1)  # (the prober's value never changes: give it time to be wrong)
        assert nice(prober.process.pid) == own
    finally:
        decoder.stop(kill=True)
        prober.stop(kill=True)


def test_nvdec_engines_by_gpu_name():
    from extractor.decode.gpu import engines_of

    assert engines_of("NVIDIA H100 80GB HBM3") == 7 and engines_of("NVIDIA A100-SXM4-80GB") == 5
    assert engines_of("some future GPU") == 1
