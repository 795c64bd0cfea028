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
