import subprocess
import sys

from conftest import ROOT


def test_benchmark_quick_runs_on_cpu(tmp_path):
    """`bench/run.py --quick`: the side-by-side benchmark end to end on a tiny corpus and
    model, so that the script cannot rot between GPU runs."""
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--work", str(tmp_path),
                          "--json", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    results = json.loads((tmp_path / "r.json").read_text())
    for corpus in ("charades", "hacs"):
        for run in ("original_fp32_b20", "original_planned", "ours_model_only", "ours_end_to_end"):
            r = results[f"{corpus}/{run}"]
            assert r["clips"] > 0 and r["clips_per_s"] > 0
        assert results[f"{corpus}/ours_end_to_end"]["clips"] == results[f"{corpus}/original_fp32_b20"]["clips"]
    assert "x original" in res.stdout


def test_balance_benchmark_quick_runs_on_cpu(tmp_path):
    """`bench/balance.py --quick`: one worker against two on a mixed-length corpus."""
    import json

    res = subprocess.run([sys.executable, str(ROOT / "bench" / "balance.py"), str(tmp_path), "--quick", "--json",
                          str(tmp_path / "b.json")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    runs = json.loads((tmp_path / "b.json").read_text())["runs"]
    assert [r["world_size"] for r in runs] == [1, 2]
    assert runs[0]["clips"] == runs[1]["clips"] > 0 and runs[0]["videos"] == runs[1]["videos"] == 6
    assert "speed-up x" in res.stdout
