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
    got = maker.from_frames(packed, upright.info, None)
    # turned after the resize, not before: the same input but for float rounding (of 1/255 a level)
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
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


def test_variable_frame_rate_matroska_is_numbered_by_timestamp_and_kept_from_nvdec(tmp_path):
    """Frames of 33 and 50 ms in turn: the CPU path numbers frames in timestamp order (frame i
    is the packet with the i-th smallest timestamp, decord's numbering), and the prober says
    the rate varies, so that NVDEC, which numbered such Matroska frames otherwise, never gets
    the file; an MP4 at that rate and a constant-rate Matroska file still go to it."""
    import av

    from extractor.decode.gpu import nvdec_cannot
    from extractor.decode.processes import CpuDecoder

    frames = synthetic_frames(30, 48, 64)
    gaps = np.cumsum([0] + [33 if i % 2 == 0 else 50 for i in range(29)])
    files = {"vfr.mkv": write_frames(tmp_path / "vfr.mkv", frames, pts_ms=gaps),
             "vfr.mp4": write_frames(tmp_path / "vfr.mp4", frames, pts_ms=gaps),
             "cfr.mkv": write_frames(tmp_path / "cfr.mkv", frames)}
    prober = CpuDecoder(-1, "pyav", 8 << 20, cuda=False)
    try:
        probed = {}
        for vid, (name, path) in enumerate(files.items()):
            prober.send(("probe", vid, str(path), 0))
            kind, got, info, reason, index = prober.conn.recv()
            assert (kind, got, reason, index) == ("probed", vid, "", None)
            probed[name] = info
    finally:
        prober.stop()
    assert [probed[n].variable_rate for n in files] == [True, True, False]
    assert "matroska" in probed["vfr.mkv"].container and "mp4" in probed["vfr.mp4"].container
    assert nvdec_cannot(probed["vfr.mkv"]) == "variable frame rate in Matroska/WebM"
    assert nvdec_cannot(probed["vfr.mp4"]) == "" and nvdec_cannot(probed["cfr.mkv"]) == ""
    reader = PyAVReader(files["vfr.mkv"])
    assert reader.info.num_frames == 30
    got = all_frames(reader)
    with av.open(str(files["vfr.mkv"])) as container:
        by_time = sorted(((f.pts, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)),
                         key=lambda pair: pair[0])
    assert [pts for pts, _ in by_time] == gaps.tolist()
    np.testing.assert_array_equal(got, np.stack([rgb for _, rgb in by_time]))
