import json
import subprocess
import sys

from conftest import ROOT


def test_benchmark_quick_runs_on_cpu(tmp_path):
    """`bench/run.py --quick`: every stage of the benchmark on a tiny corpus and model, so
    that the script cannot rot between GPU runs."""
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), str(tmp_path), "--quick", "--stages",
                          "ceilings,model,e2e,fidelity,original,balance", "--json", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    results = json.loads((tmp_path / "r.json").read_text())
    for corpus, needed in (("charades", 40), ("hacs", 32)):  # 40 frames: clips at 0..24 by 4; at 0 and 16
        r = results[corpus]
        for ceiling in ("cpu", "cpu+convert"):
            assert r["ceilings"][ceiling]["frames"] == 2 * needed and not r["ceilings"][ceiling]["failed"]
        assert r["e2e"]["defaults"]["clips"] > 0 and r["e2e"]["defaults"]["videos_by_decoder"] == {"pyav": 2}
        assert r["original"]["original_fp32_b20"]["clips"] == r["e2e"]["defaults"]["clips"]
        pixels = r["fidelity"]["pixels_cpu_decoder"]
        assert all(p["eager"]["max_abs_diff"] == 0 and p["compiled"]["max_abs_diff"] == 0 for p in pixels.values())
        for name in ("default", "fp32_cpu_decoder"):
            assert r["fidelity"][name]["cos_min"] > 0.99999
    balance = results["balance"]["charades"]
    runs = balance["runs"]
    # alone, alone on half the cores (this machine has 2 or more), two workers
    assert [(run["run"], run["world_size"]) for run in runs] == [("lone", 1), ("lone_share", 1), ("many", 2)]
    assert runs[1]["cores"] == runs[0]["cores"] // 2 and runs[0]["clips"] == runs[1]["clips"] == runs[2]["clips"] > 0
    # (a worker that made no clip, possible with 6 tiny videos, prints no line of its own)
    ranks = [w["rank"] for w in runs[2]["workers"]]
    assert ranks and set(ranks) <= {0, 1} and all(w["clips_per_s"] > 0 for w in runs[2]["workers"])
    assert sum(w["clips"] for w in runs[2]["workers"]) == runs[2]["clips"]
    assert len(balance["per_worker_vs_lone_share"]) == len(ranks) and "each worker against one alone" in res.stdout
    assert balance["features"]["cos_min"] > 0.99999
    assert "of model-only" in res.stdout and "speed-up x" in res.stdout


def test_a_capped_ceiling_counts_the_frames_of_its_window_only(tmp_path):
    """decode_only(seconds=...) stops once its window has run and counts only the frames
    after the first chunk; uncapped, it counts every frame the clips need."""
    sys.path.insert(0, str(ROOT / "bench"))
    import torch
    from ceilings import decode_only

    from extractor.decode.plan import DecodePlan
    from extractor.demo import write_video

    videos = [write_video(tmp_path / f"v{i}.mp4", 40, 64, 48) for i in range(2)]
    plan = DecodePlan(cpu_decoders=1, nvdec_sessions=0, chunk_frames=4, segment_frames=0)
    whole = decode_only(videos, plan, 4, torch.device("cpu"))
    assert whole["frames"] == 2 * 40 and whole["capped_s"] == 0.0 and not whole["failed"]
    capped = decode_only(videos, plan, 4, torch.device("cpu"), seconds=1e-9)
    assert capped["capped_s"] > 0 and 0 < capped["frames"] <= 4


def test_a_ceiling_decodes_more_clips_than_a_worker_may_hold(tmp_path, monkeypatch):
    """A worker claims videos only while it holds fewer clips than its budget, which its
    model's progress frees; decode_only runs no model, so its budget must not bind (on the
    H100 the ceilings stopped claiming after about 17 of 96 videos and waited for good)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import torch
    from ceilings import decode_only

    import extractor.decode.pacing as pacing
    from extractor.decode.plan import DecodePlan
    from extractor.demo import write_video

    monkeypatch.setattr(pacing, "START_CLIPS", 4)  # one video's clips (9) are more than that
    videos = [write_video(tmp_path / f"v{i}.mp4", 40, 64, 48) for i in range(3)]
    plan = DecodePlan(cpu_decoders=1, nvdec_sessions=0, chunk_frames=8, segment_frames=0)
    r = decode_only(videos, plan, 4, torch.device("cpu"), stall_s=10)
    assert not r["failed"] and r["frames"] == 3 * 40


def test_ceilings_run_the_plans_and_passes_asked_for(tmp_path):
    """--ceiling_plans NAME=DECODER:PROCESSES and --ceiling_passes: each named plan, with its
    number of CPU decoder processes, in the passes asked for only; a bad plan is one line."""
    sys.path.insert(0, str(ROOT / "bench"))
    import pytest
    import torch
    from run import ceiling_plans, stage_ceilings

    from extractor.demo import write_video

    assert ceiling_plans("cpu, auto4=auto:4") == {"cpu": ("cpu", 0), "auto4": ("auto", 4)}
    with pytest.raises(SystemExit, match="not NAME"):
        ceiling_plans("x=gpu:2")
    videos = [write_video(tmp_path / f"v{i}.mp4", 40, 64, 48) for i in range(2)]
    r = stage_ceilings(videos, 4, torch.device("cpu"), 0, "cpu1=cpu:1,cpu2=cpu:2", "convert")
    assert sorted(r) == ["cpu1+convert", "cpu2+convert"]
    assert r["cpu1+convert"]["plan"].startswith("1 CPU decoder") and r["cpu2+convert"]["plan"].startswith("2 CPU")
    assert all(x["frames"] == 2 * 40 and not x["failed"] for x in r.values())


def test_decoder_memory_grows_with_the_decoder_processes(tmp_path):
    """bench/decoder_memory.peak_pss: the processes' summed memory, sampled while they decode,
    is larger for two processes than for one."""
    sys.path.insert(0, str(ROOT / "bench"))
    from decoder_memory import peak_pss

    from extractor.demo import write_video

    videos = [write_video(tmp_path / f"v{i}.mp4", 48, 64, 48) for i in range(2)]
    one, two = peak_pss(videos, 1, 5.0), peak_pss(videos, 2, 5.0)
    assert 0 < one < two


def test_hf_model_stage_quick_runs_on_cpu(tmp_path):
    """`bench/run.py --stages hf_model --quick`: every Hugging Face family's tiny model timed
    through the pipeline's clip function; and `hf_models.py save` writes a folder the CLI opens."""
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), str(tmp_path), "--quick", "--stages",
                          "hf_model", "--families", "clip,videomae,vjepa2", "--json", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    results = json.loads((tmp_path / "r.json").read_text())["hf_model"]
    assert set(results) == {"clip_tiny", "videomae_tiny", "vjepa2_tiny"}
    for r in results.values():
        assert r["clips_per_s"] > 0 and r["out_shape"] == [2, 32] and r["tflops"] > 0, r
    assert results["clip_tiny"]["per"] == "frame" and results["videomae_tiny"]["pooling"] == "mean"

    sys.path.insert(0, str(ROOT / "bench"))
    from hf_models import save

    from extractor.backbones import BackboneOptions, open_backbone

    folder = save("siglip", "tiny", tmp_path / "siglip", "fp32")
    backbone = open_backbone("hf", folder, BackboneOptions())
    assert backbone.preprocessing.mean == (0.5, 0.5, 0.5) and backbone.preprocessing.size == (32, 32)
    assert "preprocessor_config.json" in backbone.description
