import numpy as np
import pytest
import torch

from extractor.video import ClipAssembler, clip_frame_indices, clip_starts, needed_frames


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


def test_pyav_decoder_gives_decords_pixels(video_dir):
    """The default decoder (FFmpeg through PyAV, read forward) must give the original
    script's frames: decord's get_batch, pixel for pixel, for the frames clips need."""
    import decord

    from extractor.video import DecordDecoder, VideoDecoder

    for name in ("long_one.mp4", "short one.mp4"):
        path = video_dir / name
        reference = decord.VideoReader(str(path))
        for stride in (4, 20):
            dec = VideoDecoder(path, 2)
            assert dec.info.num_frames == len(reference) and dec.info.fps == reference.get_avg_fps()
            need = needed_frames(clip_starts(dec.info.num_frames, 16, stride), 16, dec.info.num_frames)
            want = reference.get_batch(need.tolist()).asnumpy()
            for decoder in (dec, DecordDecoder(path, 2)):
                got = np.concatenate([frames for _, frames in decoder.chunks(need, 6)])
                assert np.array_equal(got, want)
                decoder.close()
