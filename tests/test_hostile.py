"""Hostile but real inputs, beside those in test_cli: variable frame rate, a display
rotation, 10-bit HEVC, a file the user may not read. Each gets features or a named failure."""

import numpy as np
import torch

from conftest import (cli_env, run_cli, synthetic_frames, tiny_args, without_permission_override,
                      write_frames)
from extractor.decode.common import DecodeError
from extractor.decode.readers import DecordReader, PyAVReader
from extractor.backbones import Preprocessing
from extractor.outputs import read_manifest
from extractor.video import InputMaker, preprocess
from test_video import rgb_frames


def all_frames(reader) -> np.ndarray:
    return rgb_frames(reader, np.arange(reader.info.num_frames))


def test_rotated_video_is_read_upright_and_decord_refuses_it(tmp_path):
    frames = synthetic_frames(12, 48, 64)
    plain = write_frames(tmp_path / "plain.mp4", frames)
    rotated = write_frames(tmp_path / "rotated.mp4", frames, rotation=90)
    upright = PyAVReader(rotated)
    assert upright.info.rotation == 90 and (upright.info.height, upright.info.width) == (64, 48)
    assert upright.info.coded_size == (48, 64)  # frames travel as stored; the worker turns them upright
    stored = all_frames(upright)
    np.testing.assert_array_equal(stored, all_frames(PyAVReader(plain)))
    # the worker turns them as FFmpeg's display rotation says: 90 degrees counterclockwise
    maker = InputMaker(torch.device("cpu"), Preprocessing(), torch.float32, compile=False)
    packed = torch.from_numpy(stored.reshape(len(stored), -1))
    expected = preprocess(torch.from_numpy(np.rot90(stored, 1, axes=(1, 2)).copy()), Preprocessing(), torch.float32)
    assert torch.equal(maker.from_frames(packed, upright.info, None), expected)
    try:
        DecordReader(rotated)
        raise AssertionError("decord read a rotated video")
    except DecodeError as e:
        assert "rotated" in str(e)


def test_hostile_corpus_gets_features_or_named_failures(tmp_path):
    data = tmp_path / "videos"
    data.mkdir()
    frames = synthetic_frames(30, 48, 64)
    # variable frame rate: gaps alternate 70 ms and 20 ms (22 fps on average)
    write_frames(data / "vfr.mp4", frames, pts_ms=np.cumsum([0] + [70 if i % 2 == 0 else 20 for i in range(29)]))
    write_frames(data / "rotated.mp4", frames[:20], rotation=-90)
    write_frames(data / "hevc10.mp4", frames[:20], codec="libx265", pix_fmt="yuv420p10le")
    locked = write_frames(data / "locked.mp4", frames[:20])
    locked.chmod(0)
    res = run_cli(*tiny_args(data, tmp_path / "out"), env=cli_env(), preexec_fn=without_permission_override)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    out = tmp_path / "out"
    failed = dict(line.split("\t", 1) for line in (out / "failed_videos.txt").read_text().splitlines())
    assert failed == {"locked.mp4": "permission denied"}
    manifest = read_manifest(out)
    # clips follow decoded frames, as in the original; the manifest's fps is the average
    assert np.load(out / "vfr.npy").shape == (4, 128)
    assert 20 < manifest["vfr.mp4"]["fps"] < 24
    assert np.load(out / "rotated.npy").shape == (2, 128)
    assert manifest["rotated.mp4"]["rotation_applied"] == 270 and manifest["rotated.mp4"]["video_decoder"] == "pyav"
    assert np.load(out / "hevc10.npy").shape == (2, 128)
    assert manifest["locked.mp4"]["status"] == "failed"
