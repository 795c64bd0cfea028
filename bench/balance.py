"""Multi-GPU scaling and balance (bench/run.py --stages balance): the same corpus extracted
with `feat_extraction.py --world_size 1`, again with one worker on a 1/N share of the
machine's cores (its affinity, from which it plans its decoders), and with `--world_size
N`, as a user would run it. Per run: clips/s after start-up, the whole command's wall time,
how long the first worker to run out of work waited for the last, and each worker's own
rate, its wait for frames and its frames from NVDEC and from the CPU decoders; then the
speed-up, each worker's rate against the lone worker on the same share of cores, and the
per-clip cosine between the runs' features (same dtype and kernels: they should agree to
rounding).

Corpora: charades-like and hacs-like are real content, the benchmark's source video scaled,
looped to 5 minutes and encoded once per preset, then cut (stream copy) to lengths from
10 s to 5 min; "mixed" is bench/mixed.py's corpus of mixed sizes, codecs and rotations,
its 34 files repeated (linked under other names) up to the count, run with stride 4."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

PRESETS = {"charades": 4, "hacs": 16}
KINDS = ("charades", "hacs", "mixed")


def mixed_corpus(out: Path, kind: str, count: int, min_s: float, max_s: float, source: Path, quick: bool) -> Path:
    """`count` videos whose lengths spread evenly from min_s to max_s, shuffled (built in a
    child process, which loads PyAV)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; import numpy as np; import corpus; "
            "out, kind, count, lo, hi, source, quick = Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), "
            "float(sys.argv[5]), float(sys.argv[6]), Path(sys.argv[7]), sys.argv[8] == '1'; "
            "out.mkdir(parents=True, exist_ok=True); "
            "seconds = np.random.default_rng(0).permutation(np.linspace(lo, hi, count)); "
            "[corpus.write(out / f'mixed_{i:02d}_{s:05.1f}s.mp4', int(s * 30), 64, 48, seed=i) for i, s in "
            "enumerate(seconds)] if quick else "
            "[corpus.cut(corpus.from_video(out / 'master', kind, 1, int(hi * 30) + 30, source)[0], "
            "out / f'mixed_{i:02d}_{s:05.1f}s.mp4', s) for i, s in enumerate(seconds)]")
    data = out / f"mixed_{kind}_{count}"
    res = subprocess.run([sys.executable, "-c", code, str(BENCH), str(data), kind, str(count), str(min_s), str(max_s),
                          str(source), "1" if quick else "0"], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"mixed corpus failed: {res.stderr[-3000:]}")
    return data


def repeated_mixed_corpus(out: Path, count: int, quick: bool) -> Path:
    """bench/mixed.py's mixed corpus (shortened for a quick run), its files linked under new
    names until there are `count`."""
    res = subprocess.run([sys.executable, str(BENCH / "mixed.py"), str(out / "corpora"), "--kinds", "mixed",
                          "--scale", "0.03" if quick else "1"], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"mixed corpus failed: {res.stderr[-3000:]}")
    files = sorted((out / "corpora" / "mixed").iterdir())
    data = out / f"mixed_repeated_{count}"
    data.mkdir(exist_ok=True)
    for i in range(count):
        link = data / f"r{i // len(files):02d}_{files[i % len(files)].name}"
        if not link.exists():
            link.hardlink_to(files[i % len(files)])
    return data


def run_balance(work: Path, gpus: int, quick: bool = False, source: Path = BENCH / "media" / "bigbuckbunny_720p.mp4",
                count: int = 16, min_s: float = 10, max_s: float = 300, kinds=("charades", "hacs"), logs: Path = None,
                timeout: float = 1200, profile_s: float = 0) -> dict:
    """`count`: videos per corpus (32 per worker or more for the issue's figures).
    `profile_s`: py-spy samples of the workers of the run with several (bench/cli.profile)."""
    from cli import run_cli
    from fidelity import compare

    logs = logs or work

    extra = []
    if quick:
        from extractor.demo import random_checkpoint
        from extractor.model import ViTConfig

        ckpt = work / "tiny.pt"
        if not ckpt.exists():
            random_checkpoint(ckpt, ViTConfig(width=64, layers=1, head_dim=32, mlp_width=128))
        count, min_s, max_s, kinds = min(count, 6), 0.6, 2.0, kinds[:1]
        extra = []
    else:
        from checkpoints import random_backbone

        ckpt = work / "base.pt"
        if not ckpt.exists():
            random_backbone(ckpt, "llava_vit_base_ln")
    results = {}
    machine = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    share = set(machine[:len(machine) // gpus]) if gpus > 1 and len(machine) >= gpus else None
    for kind in kinds:
        if kind == "mixed":
            data, preset = repeated_mixed_corpus(work, count, quick), "charades"
        else:
            data, preset = mixed_corpus(work, kind, count, min_s, max_s, source, quick), kind
        plans = [("lone", 1, None), *([("lone_share", 1, share)] if share else []), ("many", gpus, None)]
        runs = [{"run": name, "world_size": n, "cores": len(cores) if cores else len(machine),
                 **run_cli(data, work / f"balance_{kind}_{name}", ckpt, preset, ["--world_size", str(n), *extra], quick,
                           logs / f"balance_{kind}_{name}.log", timeout, profile_s if n > 1 else 0, cores=cores)}
                for name, n, cores in plans]
        r = results[kind] = {"runs": runs}
        for run in runs:
            if "error" in run:
                print(f"{kind} {run['run']} (world_size {run['world_size']}) FAILED: {run['error']}", flush=True)
                continue
            print(f"{kind} {run['run']} (world_size {run['world_size']}, {run['cores']} cores): {run['videos']} videos, "
                  f"{run['clips']} clips | {run['clips_per_s']:.1f} clips/s after {run['startup_s']:.1f}s start-up | "
                  f"command wall {run['wall_s']:.1f}s | first worker out of work waited {run['end_idle_s']:.1f}s "
                  f"({run['end_idle_pct']:.1f}% of the run) | peak RAM per worker {run['peak_ram_gib']:.2f} GiB | "
                  f"{run['decoding']}", flush=True)
            for w in run["workers"]:
                frames = w["nvdec_frames"] + (w["cpu_frames"] or 0)
                nvdec = f"NVDEC {w['nvdec_frames'] / frames:.0%} of its frames" if frames and w["cpu_frames"] is not None \
                    else "CPU decoders only"
                print(f"    R{w['rank']}: {w['clips_per_s']:.1f} clips/s from its first batch | waited for frames "
                      f"{w['waited_s']:.1f}s of {w['work_s']:.1f}s | {nvdec}", flush=True)
        if any("error" in run for run in runs):
            continue
        one, many = runs[0], runs[-1]
        alone = runs[1] if share else one
        r["per_worker_vs_lone_share"] = [w["clips_per_s"] / alone["workers"][0]["clips_per_s"]
                                         for w in many["workers"]] if alone["workers"] else []
        r["speedup"] = many["clips_per_s"] / one["clips_per_s"]
        r["wall_speedup"] = one["wall_s"] / many["wall_s"]
        r["features"] = compare(work / f"balance_{kind}_many", work / f"balance_{kind}_lone")
        shares = ", ".join(f"{x:.0%}" for x in r["per_worker_vs_lone_share"])
        print(f"{kind}: speed-up x{r['speedup']:.2f} (clips/s after start-up), x{r['wall_speedup']:.2f} (whole "
              f"command wall time) | each worker against one alone on {alone['cores']} cores: {shares or 'n/a'} | "
              f"features {gpus} vs 1 worker: per-clip cosine min {r['features']['cos_min']:.7f}", flush=True)
    return results
