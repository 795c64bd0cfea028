"""Large datasets as people run them: an ETA measured in the work, --video_list, nested
folders with --recursive, run.log, and a summary that points at the run's records."""

import heapq
import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import claimed_videos, run_cli, tiny_args
from extractor.demo import write_video
from extractor.launch import RunSummary, Supervisor, local_group, run_group
from extractor.outputs import read_manifest
from extractor.config import RunConfig
from extractor.progress import Progress, RunLog

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def simulated_run_events(seed: int, workers=4, videos=200, startup_s=60.0, overhead_s=0.3, report_every_s=2.0,
                         report_lag_s=2.0):
    """The events process 0 receives from `workers` workers on videos of 10 s to 10 min
    (log-uniform), claimed largest file first: a worker spends `overhead_s` on a video plus
    its frames at 240-360 frames/s; file sizes follow frames at bitrates that differ by
    +-30%. In-video progress arrives every `report_every_s`, `report_lag_s` old. Returns
    (sizes, [(time, rank, event)] in time order, time the last video ends)."""
    rng = np.random.default_rng(seed)
    frames = (np.exp(rng.uniform(np.log(10), np.log(600), videos)) * 30).astype(int)
    sizes = {f"v{i:03d}.mp4": int(f * rng.uniform(0.7, 1.3) * 2000) for i, f in enumerate(frames)}
    frames = dict(zip(sizes, frames.tolist()))
    speed = dict(zip(sizes, rng.uniform(240, 360, videos)))
    events = [(startup_s + 0.5 * r, r, {"type": "ready", "backbone": "sim"}) for r in range(workers)]
    free = [(startup_s + 0.5 * r, r) for r in range(workers)]
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        t, rank = heapq.heappop(free)
        decode_s = frames[name] / speed[name]
        events.append((t, rank, {"type": "claimed", "video": name}))
        for k in range(1, int((overhead_s + decode_s) / report_every_s) + 1):
            seen = np.clip((k * report_every_s - report_lag_s - overhead_s) / decode_s, 0, 1)
            events.append((t + k * report_every_s, rank,
                           {"type": "progress", "videos": {name: [int(frames[name] * seen), frames[name]]}}))
        end = t + overhead_s + decode_s
        events.append((end, rank, {"type": "done", "video": name, "clips": max(1, (frames[name] - 16) // 4 + 1),
                                   "frames": frames[name], "fps": 30.0, "decoder": "sim", "decode_s": 0.0,
                                   "model_s": 0.0, "save_s": 0.0}))
        heapq.heappush(free, (end, rank))
    events.sort(key=lambda e: e[0])
    return sizes, events, max(t for t, _, _ in events)


@pytest.mark.parametrize("seed", range(10))
def test_eta_is_right_within_25_percent_on_videos_of_very_different_lengths(seed, capsys):
    """The real Progress fed a simulated run on a fake clock (a 13-minute run, a minute of
    start-up): from 3% of the work done to 95%, its ETA is within 25% of the time the run
    really had left. Counting videos, as the bar used to, is off by several times."""
    sizes, events, end = simulated_run_events(seed)
    clock = FakeClock()
    progress = Progress(sizes, RunSummary(), RunLog(None), clip_len=16, stride=4, clock=clock)
    checked, count_errors = 0, []
    pending = iter(events)
    nxt = next(pending)
    for now in np.arange(0.0, end, 5.0):
        while nxt is not None and nxt[0] <= now:
            clock.now = nxt[0]
            progress.handle(nxt[1], nxt[2])
            nxt = next(pending, None)
        clock.now = now
        snap = progress.snapshot()
        if not 0.03 <= snap.fraction <= 0.95:
            continue
        left = end - now
        assert abs(snap.eta_s - left) <= 0.25 * left, (now, snap, left)
        checked += 1
        busy = now - progress.t_ready
        if snap.done:
            count_errors.append(abs((snap.videos - snap.done) * busy / snap.done - left) / left)
    capsys.readouterr()
    assert checked > 100
    assert max(count_errors) > 2.0  # the ETA a video count gives


def _reporting_worker(rank, local_rank, cfg, data_path, conn, cpu_threads, seconds_per_byte):
    """Speaks the workers' protocol (as tests/test_scale.py's simulated worker) with a
    start-up, and reports the frames it has 'decoded' in each video as the pipeline does;
    a video takes time in proportion to its size."""
    time.sleep(0.5)
    conn.send(("event", {"type": "ready", "backbone": "sim"}))
    for name, size in claimed_videos(conn, data_path):
        frames, seconds = size // 100, size * seconds_per_byte
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < seconds:
            conn.send(("event", {"type": "progress", "video": name, "frames": int(frames * elapsed / seconds),
                                 "total": frames}))
            time.sleep(min(0.05, seconds - elapsed))
        conn.send(("event", {"type": "done", "video": name, "clips": frames // 4, "frames": frames, "fps": 30.0,
                             "decoder": "sim", "decode_s": 0.0, "model_s": 0.0, "save_s": 0.0}))
    conn.send(("exit",))
    conn.close()


def test_progress_inside_videos_reaches_process_0_through_the_store(tmp_path, monkeypatch, capsys):
    """Two simulated workers on the real supervisor, store and coordinator: the work done
    moves before any video has ended (the workers' in-video progress, summed up per
    supervisor, reaches process 0), the ETA follows the time really left, and with stderr
    not a terminal a plain progress line comes every --log_every_s, into run.log too."""
    data = tmp_path / "videos"
    data.mkdir()
    units = [89, 55, 34, 21, 13, 8, 5, 3, 2, 1]  # very different lengths
    for i, n in enumerate(units):
        with open(data / f"v{i}.mp4", "wb") as f:
            f.truncate(n * 10_000)
    monkeypatch.setattr(Supervisor, "PROGRESS_EVERY_S", 0.1)
    samples = []
    tick = Progress.tick

    def sampling_tick(self):
        tick(self)
        samples.append((time.monotonic(), self.snapshot()))

    monkeypatch.setattr(Progress, "tick", sampling_tick)
    summary = RunSummary(skipped=3)
    log = RunLog(tmp_path / "run.log")
    cfg = RunConfig(save_path=tmp_path, ckpt_path=tmp_path)
    seconds_per_byte = 2 * 8.0 / (sum(units) * 10_000)  # two workers, about 8 s
    run_group(local_group(2), cfg, data, [f"v{i}.mp4" for i in range(10)], summary, worker=_reporting_worker,
              thread_arg=seconds_per_byte, log=log, log_every_s=1.0)
    end = time.monotonic()
    log.close()
    assert summary.done == 10
    assert any(snap.done == 0 and snap.fraction > 0.05 for _, snap in samples)
    checked = 0
    for t, snap in samples:
        if 0.1 <= snap.fraction <= 0.75:
            left = end - t
            assert abs(snap.eta_s - left) <= 0.25 * left + 0.3, (snap, left)
            checked += 1
    assert checked > 20
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("progress: ")]
    assert len(lines) >= 5
    assert re.fullmatch(r"progress: \d+\.\d% of the work \| ETA \d+:\d\d:\d\d \| \d+\.\d clips/s \| \d+/10 videos: "
                        r"\d+ done, 0 failed \| 3 skipped \| elapsed \d+:\d\d:\d\d", lines[-1]), lines[-1]
    logged = (tmp_path / "run.log").read_text().splitlines()
    assert all(re.match(STAMP, line) for line in logged)
    assert [line[20:] for line in logged if "progress: " in line] == lines


def test_progress_bar_on_a_terminal_shows_rate_eta_and_counts():
    clock = FakeClock()
    summary = RunSummary(skipped=2)
    screen = io.StringIO()
    progress = Progress({"a.mp4": 3000, "b.mp4": 1000}, summary, RunLog(None), clip_len=16, stride=4,
                        bar_file=screen, clock=clock)
    for t, ev in [(10, {"type": "ready", "backbone": "sim"}), (10, {"type": "claimed", "video": "a.mp4"}),
                  (20, {"type": "progress", "videos": {"a.mp4": [206, 412]}})]:
        clock.now = t
        progress.handle(0, ev)
    clock.now = 20
    progress.tick()
    text = screen.getvalue().split("\r")[-1]
    # half of a.mp4 (100 clips) in 10 s of work: 1500 of 4000 bytes, 2500 left at 150 bytes/s
    assert text.startswith(" 38%|") and "ETA 0:00:17" in text and "5.0 clips/s" in text, text
    assert "0/2 videos: 0 done, 0 failed | 2 skipped" in text, text
    progress.close()


# ---------------------------------------------------------------------------------------
# Which videos, and where their features go (the CLI, tiny model)


def test_recursive_keeps_the_folder_layout_resumes_and_logs_the_run(tmp_path):
    data, out = tmp_path / "videos", tmp_path / "out"
    for rel, n in (("class_a/clip.mp4", 20), ("class_b/clip.mp4", 16), ("top.mp4", 10)):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video(data / rel, n, width=64, height=48)
    (data / ".hidden").mkdir()
    write_video(data / ".hidden" / "skip.mp4", 16, width=64, height=48)
    anno = tmp_path / "anno.json"
    anno.write_text(json.dumps({"database": {"clip": {}, "top": {}, "gone": {}}}))
    args = tiny_args(data, out, "--recursive", "--anno_file", anno)
    res = run_cli(*args)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy")) == [
        "class_a/clip.npy", "class_b/clip.npy", "top.npy"]  # equal stems in different folders both kept
    assert np.load(out / "class_a" / "clip.npy").shape == (2, 128)
    manifest = read_manifest(out)
    assert sorted(manifest) == ["class_a/clip.mp4", "class_b/clip.mp4", "top.mp4"]
    assert manifest["class_b/clip.mp4"]["feature_file"] == "class_b/clip.npy"
    assert (out / "missing_files.txt").read_text().splitlines() == ["gone"]
    summary = [line for line in res.stdout.splitlines() if line.startswith("summary: ")]
    assert len(summary) == 1 and "summary: 3 done, 0 skipped, 0 failed" in summary[0]
    assert f"records: {out / 'manifest.jsonl'} (3 entries added), {out / 'missing_files.txt'} (1 annotated videos " \
           "without features)" in summary[0]
    assert "run the same command again" not in summary[0]  # nothing left to do

    log = (out / "run.log").read_text(encoding="utf-8").splitlines()
    assert all(re.match(STAMP, line) for line in log)
    texts = [line[20:] for line in log]
    assert texts[0].startswith("run started on ") and "--recursive" in texts[0]
    assert texts[1].startswith("3 videos, 3 to do, 0 already done | device cpu x1")
    video_lines = [line for line in res.stdout.splitlines() if " clips (" in line]
    assert len(video_lines) == 3 and all(line in texts for line in video_lines)
    assert any("warning: top.mp4: 10 frames, shorter than one clip" in line for line in texts)
    assert summary[0] in texts

    (out / "class_a" / ".clip.npy.x1y2z3.tmp").write_bytes(b"partial")  # a write a killed run left
    res = run_cli(*args)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "3 videos, 0 to do, 3 already done" in res.stdout and "removed 1 partial file" in res.stderr
    assert not list(out.rglob("*.tmp"))
    texts = [line[20:] for line in (out / "run.log").read_text(encoding="utf-8").splitlines()]
    assert sum(t.startswith("run started on ") for t in texts) == 2  # appended
    assert texts[-1].startswith("summary: 0 done, 3 skipped, 0 failed")


def test_video_list_names_the_videos_and_a_missing_one_is_a_failure(tmp_path):
    data, out, elsewhere = tmp_path / "videos", tmp_path / "out", tmp_path / "elsewhere"
    (data / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    write_video(data / "sub" / "one.mp4", 20, width=64, height=48)
    write_video(data / "two.mp4", 16, width=64, height=48)
    write_video(data / "not_listed.mp4", 16, width=64, height=48)
    write_video(elsewhere / "three.mp4", 16, width=64, height=48)
    listing = tmp_path / "videos.txt"
    listing.write_text(f"# the videos to do\nsub/one.mp4\n\n  two.mp4  \n{elsewhere / 'three.mp4'}\nmissing.mp4\n"
                       f"./two.mp4\n{data / 'sub' / 'one.mp4'}\n")
    res = run_cli(*tiny_args(data, out, "--video_list", listing))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "4 videos, 3 to do, 0 already done, 1 not found" in res.stdout
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy")) == ["sub/one.npy", "three.npy", "two.npy"]
    assert (out / "failed_videos.txt").read_text().splitlines() == ["missing.mp4\tnot found"]
    assert "FAILED missing.mp4: not found" in res.stderr
    manifest = read_manifest(out)
    assert manifest["missing.mp4"]["status"] == "failed"
    outside = str(elsewhere / "three.mp4")
    assert manifest[outside]["status"] == "done" and manifest[outside]["feature_file"] == "three.npy"
    assert manifest["sub/one.mp4"]["feature_file"] == "sub/one.npy"
    summary = next(line for line in res.stdout.splitlines() if line.startswith("summary: "))
    assert summary.startswith("summary: 3 done, 0 skipped, 1 failed")
    assert f"{out / 'manifest.jsonl'} (4 entries added), {out / 'failed_videos.txt'} (1 videos)" in summary
    assert summary.endswith("1 videos have no features: run the same command again to resume (it tries them again; "
                            "finished videos are skipped)")
    texts = [line[20:] for line in (out / "run.log").read_text().splitlines()]
    assert "FAILED missing.mp4: not found" in texts and summary in texts


def test_two_videos_with_one_output_stop_the_run_before_any_work(tmp_path):
    data = tmp_path / "videos"
    data.mkdir()
    for name in ("clip.mp4", "clip.avi", "other.mp4"):
        (data / name).write_bytes(b"never read")
    res = run_cli(*tiny_args(data, tmp_path / "out"))
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.strip() == f"error: clip.avi and clip.mp4 would both write {tmp_path / 'out' / 'clip.npy'}: " \
                                 "rename one of them"
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_rate_counts_from_the_first_worker_ready_to_the_last_video_written():
    """Start-up before and the processes' shutdown after are not work: the summary's rate
    divides the clips by the time between them (a short benchmark run spent seconds in
    process teardown)."""
    clock = FakeClock()
    summary = RunSummary()
    progress = Progress({"a.mp4": 100, "b.mp4": 100}, summary, RunLog(None), clip_len=16, stride=4, clock=clock)
    done = {"type": "done", "clips": 10, "frames": 50, "fps": 25.0, "decode_s": 1.0, "model_s": 1.0, "save_s": 0.0,
            "decoder": "pyav", "path": "x", "feature_file": "x.npy"}
    for t, rank, ev in ((10.0, 0, {"type": "ready", "backbone": "sim"}), (20.0, 0, {**done, "video": "a.mp4"}),
                        (30.0, 0, {**done, "video": "b.mp4"})):
        clock.now = t
        progress.handle(rank, ev)
    clock.now = 35.0
    progress.close()
    assert (summary.startup_s, summary.wall_s, summary.work_s()) == (10.0, 35.0, 20.0)


def test_a_result_from_a_process_thought_lost_replaces_its_failure():
    """A process whose heartbeats stalled past --lost_after_s had its videos recorded failed;
    its result coming after all makes the video done, counted once."""
    summary = RunSummary()
    progress = Progress({"a.mp4": 100}, summary, RunLog(None), clip_len=16, stride=4)
    progress.handle(1, {"type": "claimed", "video": "a.mp4"})
    progress.lose_ranks([1], "was lost")
    assert list(summary.failed) == ["a.mp4"] and progress.has_result("a.mp4")
    progress.handle(1, {"type": "done", "video": "a.mp4", "clips": 10, "frames": 50, "fps": 25.0, "decode_s": 1.0,
                        "model_s": 1.0, "save_s": 0.0, "decoder": "pyav", "path": "x", "feature_file": "x.npy"})
    assert summary.done == 1 and not summary.failed
    progress.close()


def test_a_video_written_before_its_worker_was_lost_counts_as_done(tmp_path):
    """The lost worker wrote v0's features and died before reporting them: v0 is done (its
    file is complete), not failed; v1, which failed for a reason of its own, stays failed."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from feat_extraction import keep_written_before_loss
    from extractor.outputs import Manifest, read_manifest, save_features
    from extractor.config import RunConfig

    cfg = RunConfig(save_path=tmp_path, ckpt_path=tmp_path / "none")
    for name in ("v0", "v1"):
        save_features(tmp_path / f"{name}.npy", np.ones((3, 8), dtype=np.float32))
    summary = RunSummary()
    summary.failed = {"v0.mp4": "worker 1 was lost (its process stopped responding) while holding it",
                      "v1.mp4": "not a decodable video", "v2.mp4": "worker 1 was lost (...) while holding it"}
    said = []
    keep_written_before_loss(cfg, tmp_path, summary, Manifest(tmp_path, {}), 8, type("Log", (), {
        "say": lambda self, text, err=False: said.append(text)})())
    assert summary.done == 1 and sorted(summary.failed) == ["v1.mp4", "v2.mp4"]  # v2 wrote nothing
    assert read_manifest(tmp_path)["v0.mp4"]["status"] == "done" and len(said) == 1
