import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import HF_TINY, ROOT, TINY_CKPT, cli_env, original_clip_features, run_cli, tiny_args, write_audio_only
from extractor.checkpoints import build_from_checkpoint, read_checkpoint
from extractor.demo import write_video


def rel_err(a, b):
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b))


def test_features_match_the_original_per_clip_path(video_dir, tmp_path):
    res = run_cli(*tiny_args(video_dir, tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    model = build_from_checkpoint(read_checkpoint(TINY_CKPT, "auto"))
    for name, clips in (("long_one", 7), ("short one", 1)):
        feats = np.load(tmp_path / "out" / f"{name}.npy")
        assert feats.shape == (clips, 128) and feats.dtype == np.float32
        ref = original_clip_features(video_dir / f"{name}.mp4", model, 16, 4)
        assert rel_err(feats, ref) < 1e-5
    assert "shorter than one clip" in res.stderr
    assert "summary: 2 done, 0 skipped, 0 failed" in res.stdout
    import hashlib

    from extractor.outputs import read_manifest

    manifest = read_manifest(tmp_path / "out")
    entry = manifest["long_one.mp4"]
    assert entry["status"] == "done" and entry["frames"] == 40 and entry["fps"] == 30.0
    assert entry["num_clips"] == 7 and entry["shape"] == [7, 128] and entry["feature_file"] == "long_one.npy"
    assert entry["clip_len"] == 16 and entry["stride"] == 4 and "stride * i" in entry["clip_start_frame"]
    assert entry["checkpoint_sha256_16"] == hashlib.sha256(TINY_CKPT.read_bytes()).hexdigest()[:16]
    assert "temporal positions contiguous" in entry["backbone"] and entry["preprocessing"].endswith("normalize none")
    assert manifest["short one.mp4"]["num_clips"] == 1
    assert "long_one.mp4: 7 clips" in res.stdout and "decode" in res.stdout and "model" in res.stdout
    assert not (tmp_path / "out" / "failed_videos.txt").exists()


def test_every_decoder_gives_the_same_features(video_dir, tmp_path):
    """PyAV's YUV planes made RGB by the worker, PyAV's RGB (a 4:4:4 video the worker cannot
    convert exactly), decord's RGB: the same features, whatever the number of processes."""
    from conftest import synthetic_frames, write_frames
    from extractor.outputs import read_manifest

    data = tmp_path / "videos"
    shutil.copytree(video_dir, data)
    write_video(data / "bigger.mp4", 40, width=320, height=240)
    write_frames(data / "yuv444.mp4", synthetic_frames(20, 48, 64), pix_fmt="yuv444p")
    runs = {"cpu": ["--cpu_decoders", "2", "--num_threads", "2"], "decord": [], "auto": []}
    for name, extra in runs.items():
        res = run_cli(*tiny_args(data, tmp_path / name, "--decoder", name, *extra))
        assert res.returncode == 0, res.stderr
    assert "decoder auto: per worker 1 CPU decoder processes (pyav" in res.stdout
    # the pixels are equal (test_video); rows may differ in the last bits when videos share
    # batches differently (two decoder processes interleave them)
    for f in sorted((tmp_path / "cpu").glob("*.npy")):
        for name in runs:
            assert rel_err(np.load(tmp_path / name / f.name), np.load(f)) < 1e-6
    used = {name: {v: e["video_decoder"] for v, e in read_manifest(tmp_path / name).items()} for name in runs}
    assert set(used["cpu"].values()) == set(used["auto"].values()) == {"pyav"}
    assert set(used["decord"].values()) == {"decord"} and len(used["decord"]) == 4


def test_presets_prefix_suffix_and_clip_overrides(video_dir, tmp_path):
    res = run_cli(*tiny_args(video_dir, tmp_path / "out", "--data_set", "hacs", "--prefix", "v_", "--suffix", "_f"))
    assert res.returncode == 0, res.stderr
    assert np.load(tmp_path / "out" / "v_long_one_f.npy").shape == (2, 128)  # 40 frames, stride 16
    res = run_cli(*tiny_args(video_dir, tmp_path / "o2", "--clip_len", "8", "--stride", "8", "--ext", "pt"))
    assert res.returncode == 0, res.stderr
    import torch

    assert torch.load(tmp_path / "o2" / "long_one.pt").shape == (5, 128)


def test_two_worker_processes_give_the_same_features(video_dir, tmp_path):
    data = tmp_path / "videos"
    shutil.copytree(video_dir, data)
    write_video(data / "third.mp4", 24, width=64, height=64)
    one = run_cli(*tiny_args(data, tmp_path / "one"))
    two = run_cli(*tiny_args(data, tmp_path / "two", "--world_size", "2"))
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert "summary: 3 done" in two.stdout
    done_lines = [line for line in two.stdout.splitlines() if " clips (" in line]
    assert sorted(line.split("] ")[1].split(":")[0] for line in done_lines) == ["long_one.mp4", "short one.mp4",
                                                                               "third.mp4"]  # each exactly once
    for f in sorted((tmp_path / "one").glob("*.npy")):
        np.testing.assert_allclose(np.load(tmp_path / "two" / f.name), np.load(f), rtol=1e-5, atol=1e-6)
    assert len(list((tmp_path / "two").glob("*.npy"))) == 3


def test_skip_existing_overwrite_and_recompute_broken(video_dir, tmp_path):
    out = tmp_path / "out"
    assert run_cli(*tiny_args(video_dir, out)).returncode == 0
    target = out / "long_one.npy"
    before = target.stat().st_mtime_ns
    res = run_cli(*tiny_args(video_dir, out))
    assert res.returncode == 0 and "0 to do, 2 already done" in res.stdout
    assert target.stat().st_mtime_ns == before
    res = run_cli(*tiny_args(video_dir, out, "--overwrite"))
    assert res.returncode == 0 and "summary: 2 done" in res.stdout
    assert target.stat().st_mtime_ns != before
    good = np.load(target)
    target.write_bytes(target.read_bytes()[:100])  # a truncated file from some other tool
    res = run_cli(*tiny_args(video_dir, out))
    assert res.returncode == 0 and "recomputing" in res.stderr
    np.testing.assert_allclose(np.load(target), good, rtol=1e-5, atol=1e-6)  # batches differ


def test_missing_files_from_annotations(video_dir, tmp_path):
    anno = tmp_path / "anno.json"
    anno.write_text(json.dumps({"database": {"long_one": {}, "not_here": {}, "short one": {}, "gone": {}}}))
    res = run_cli(*tiny_args(video_dir, tmp_path / "out", "--anno_file", anno))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "missing_files.txt").read_text().splitlines() == ["not_here", "gone"]


def test_undecodable_files_are_recorded_and_the_rest_processed(video_dir, tmp_path):
    data = tmp_path / "videos"
    data.mkdir()
    shutil.copy(video_dir / "long_one.mp4", data / "good.mp4")
    (data / "empty.mp4").write_bytes(b"")
    (data / "truncated.mp4").write_bytes((video_dir / "long_one.mp4").read_bytes()[:3000])
    (data / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    write_audio_only(data / "audio_only.mp4")
    (data / "notes.txt").write_text("not a video")
    (data / "meta.json").write_text("{}")
    res = run_cli(*tiny_args(data, tmp_path / "out"), timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert (tmp_path / "out" / "good.npy").exists()
    failed = dict(line.split("\t", 1) for line in (tmp_path / "out" / "failed_videos.txt").read_text().splitlines())
    assert sorted(failed) == ["audio_only.mp4", "empty.mp4", "noise.mp4", "truncated.mp4"]
    assert all(reason.strip() for reason in failed.values())
    assert "0 bytes" in failed["empty.mp4"]
    for name in failed:
        assert f"FAILED {name}" in res.stderr
        assert not (tmp_path / "out" / (name[:-4] + ".npy")).exists()
    assert "summary: 1 done, 0 skipped, 4 failed" in res.stdout
    from extractor.outputs import read_manifest

    manifest = read_manifest(tmp_path / "out")
    assert {name: e["status"] for name, e in manifest.items()} == {
        "good.mp4": "done", "empty.mp4": "failed", "truncated.mp4": "failed", "noise.mp4": "failed",
        "audio_only.mp4": "failed"}
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("case, words", [
    ("missing_data", "is not an existing folder"),
    ("empty_folder", "no video files"),
    ("only_text_files", "no video files"),
    ("missing_ckpt", "checkpoint not found"),
    ("unfitting_ckpt", "does not fit llava_vit_base_ln"),
    ("tf32_on_cpu", "needs --device cuda"),
    ("nvdec_on_cpu", "--decoder nvdec needs --device cuda"),
    ("no_preset_no_stride", "give --data_set"),
    ("zero_batch", "must be at least 1"),
    ("bad_anno", "--anno_file"),
    ("unreadable_video_list", "--video_list"),
    ("empty_video_list", "names no videos"),
    ("video_list_and_recursive", "not allowed with argument"),
])
def test_bad_invocations_exit_2_with_one_line(video_dir, tmp_path, case, words):
    empty = tmp_path / "empty"
    empty.mkdir()
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("x")
    (tmp_path / "comments_only.txt").write_text("# nothing yet\n\n")
    base = {"data": video_dir, "ckpt": TINY_CKPT, "extra": []}
    args = {
        "missing_data": dict(base, data=tmp_path / "nope"),
        "empty_folder": dict(base, data=empty),
        "only_text_files": dict(base, data=texts),
        "missing_ckpt": dict(base, ckpt=tmp_path / "none.pt"),
        "unfitting_ckpt": dict(base, extra=["--model_name", "llava_vit_base_ln"]),
        "tf32_on_cpu": dict(base, extra=["--dtype", "tf32"]),
        "nvdec_on_cpu": dict(base, extra=["--decoder", "nvdec"]),
        "zero_batch": dict(base, extra=["--batch_clips", "0"]),
        "bad_anno": dict(base, extra=["--anno_file", tmp_path / "missing.json"]),
        "unreadable_video_list": dict(base, extra=["--video_list", tmp_path / "no_list.txt"]),
        "empty_video_list": dict(base, extra=["--video_list", tmp_path / "comments_only.txt"]),
        "video_list_and_recursive": dict(base, extra=["--video_list", tmp_path / "comments_only.txt", "--recursive"]),
    }.get(case, base)
    argv = tiny_args(args["data"], tmp_path / "out", *args["extra"])
    argv[argv.index("--ckpt_path") + 1] = args["ckpt"]
    if case == "no_preset_no_stride":
        argv = argv[2:]
    res = run_cli(*argv)
    assert res.returncode == 2, res.stdout + res.stderr
    assert words in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not list((tmp_path / "out").glob("*.npy")) if (tmp_path / "out").exists() else True


def test_cuda_requested_without_a_gpu(video_dir, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    argv = tiny_args(video_dir, tmp_path / "out")
    argv[argv.index("--device") + 1] = "cuda"
    res = run_cli(*argv)
    assert res.returncode == 2 and "no CUDA GPU" in res.stderr


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    from extractor import outputs

    target = tmp_path / "feat.npy"

    def broken_save(fh, arr, allow_pickle=False):
        fh.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(outputs.np, "save", broken_save)
    with pytest.raises(OSError):
        outputs.save_features(target, np.zeros((3, 4), dtype=np.float32))
    assert list(tmp_path.iterdir()) == []


def test_demo_command_runs(tmp_path):
    import subprocess
    import sys
    from conftest import ROOT

    res = subprocess.run([sys.executable, str(ROOT / "feat_extraction.py"), "--demo"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert res.returncode == 0, res.stderr
    assert "RANDOM-weights" in res.stdout
    assert np.load(tmp_path / "demo_data" / "features" / "sample_demo.npy").shape == (21, 192)


def test_compiled_static_batches_match_eager(video_dir, tmp_path):
    """The GPU path's shape: a compiled model on a fixed-size input buffer, the last partial
    batch running on stale rows. It must give the eager model's features."""
    eager = run_cli(*tiny_args(video_dir, tmp_path / "eager", "--batch_clips", "3"))
    compiled = run_cli(*tiny_args(video_dir, tmp_path / "compiled", "--batch_clips", "3", "--compile"), timeout=600)
    assert eager.returncode == 0 and compiled.returncode == 0, compiled.stderr
    assert "compiled" in compiled.stdout
    # the worker's start-up, part by part; nothing compiled once it was ready
    parts = re.search(r"ready after [\d.]+s[^(]*\(worker: ([^)]*)\)", compiled.stdout + compiled.stderr).group(1)
    # (the checkpoint is opened and loaded beside the conversion's compilation: "load")
    assert [p.split()[0] for p in parts.split(", ")] == ["python", "cuda", "device", "maker", "decoders", "conversions", "load",
                                                        "compile"]
    assert "ran eagerly" not in compiled.stdout + compiled.stderr
    for f in sorted((tmp_path / "eager").glob("*.npy")):
        np.testing.assert_allclose(np.load(tmp_path / "compiled" / f.name), np.load(f), rtol=1e-4, atol=1e-5)


def test_hugging_face_folder_end_to_end(video_dir, tmp_path):
    """A OneVision-Encoder folder: architecture from config.json, spread64 positions by
    default, with --normalize clip the release's own video path."""
    import torch

    from extractor.model import temporal_positions

    argv = tiny_args(video_dir, tmp_path / "hf", "--normalize", "clip")
    argv[argv.index("--ckpt_path") + 1] = HF_TINY
    argv[argv.index("--model_name") + 1] = "llava_vit_large_ln"
    res = run_cli(*argv)
    assert res.returncode == 0, res.stderr
    assert "--model_name llava_vit_large_ln ignored" in res.stderr
    assert "temporal positions spread64" in res.stdout and "normalize mean (0.4815" in res.stdout
    model = build_from_checkpoint(read_checkpoint(HF_TINY, None))
    feats = np.load(tmp_path / "hf" / "long_one.npy")
    ref = original_clip_features(video_dir / "long_one.mp4", model, 16, 4, normalize=True,
                                 t_pos=temporal_positions(16, "spread64"))
    assert feats.shape == (7, 128) and rel_err(feats, ref) < 1e-5
    res = run_cli(*argv[:argv.index("--save_path") + 1], tmp_path / "contig",
                  *argv[argv.index("--save_path") + 2:], "--temporal_positions", "contiguous")
    assert res.returncode == 0 and "temporal positions contiguous" in res.stdout
    contiguous = np.load(tmp_path / "contig" / "long_one.npy")
    ref_contiguous = original_clip_features(video_dir / "long_one.mp4", model, 16, 4, normalize=True,
                                            t_pos=torch.arange(16))
    assert rel_err(contiguous, ref_contiguous) < 1e-5 and rel_err(contiguous, ref) > 1e-5


def test_folder_that_is_not_a_model(tmp_path, video_dir):
    bad = tmp_path / "not_a_model"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "bert"}')
    argv = tiny_args(video_dir, tmp_path / "out")
    argv[argv.index("--ckpt_path") + 1] = bad
    res = run_cli(*argv)
    assert res.returncode == 2 and "not 'onevision_encoder'" in res.stderr


def test_awkward_but_valid_inputs(video_dir, tmp_path):
    """A 1-frame video, a non-ASCII name with spaces, a directory named like a video, and an
    odd frame size: features or a named failure, never a crash of the run."""
    data = tmp_path / "videos"
    data.mkdir()
    write_video(data / "one frame.mp4", 1, width=64, height=48)
    write_video(data / "vidéo ünïcode 视频.mp4", 20, width=66, height=50)
    (data / "folder.mp4").mkdir()
    res = run_cli(*tiny_args(data, tmp_path / "out"))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert np.load(tmp_path / "out" / "one frame.npy").shape == (1, 128)
    assert np.load(tmp_path / "out" / "vidéo ünïcode 视频.npy").shape == (2, 128)
    failed = (tmp_path / "out" / "failed_videos.txt").read_text(encoding="utf-8").splitlines()
    assert failed == ["folder.mp4\tis a directory"]


def test_other_libraries_log_lines_stay_off_the_terminal_unless_verbose(monkeypatch):
    """PyNvVideoCodec's logger (and FFmpeg's inside it) read LOGGER_LEVEL when they load: a
    run sets it to FATAL for its workers, leaves it unset with --verbose, and keeps a user's."""
    import feat_extraction

    monkeypatch.delenv("LOGGER_LEVEL", raising=False)
    feat_extraction.quiet_libraries(verbose=True)
    assert "LOGGER_LEVEL" not in os.environ
    feat_extraction.quiet_libraries(verbose=False)
    assert os.environ["LOGGER_LEVEL"] == "FATAL"
    monkeypatch.setenv("LOGGER_LEVEL", "INFO")
    feat_extraction.quiet_libraries(verbose=False)
    assert os.environ["LOGGER_LEVEL"] == "INFO"


HELD = """
import gc, sys
sys.path.insert(0, sys.argv[1])
import feat_extraction
import extractor.launch
from extractor.backbones.base import Backbone

run_group = extractor.launch.run_group


def counting(*args, **kwargs):
    gc.collect()
    print("backbones held:", sum(isinstance(o, Backbone) for o in gc.get_objects()), flush=True)
    return run_group(*args, **kwargs)


if __name__ == "__main__":
    extractor.launch.run_group = counting
    sys.exit(feat_extraction.main(sys.argv[2:]))
"""


def test_process_0_holds_no_backbone_through_the_run(video_dir, tmp_path):
    """The checkpoint opened to check it before any work (a state dict, a Hugging Face model)
    is let go before the workers run: they open their own."""
    res = subprocess.run([sys.executable, "-c", HELD, str(ROOT), *map(str, tiny_args(video_dir, tmp_path / "out"))],
                         capture_output=True, text=True, timeout=300, env=cli_env(), cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "backbones held: 0" in res.stdout, res.stdout[-2000:]
