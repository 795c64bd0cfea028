"""Multi-GPU scaling and balance: the same corpus of mixed lengths (default 10 s to 5 min,
charades-like 640x480) extracted with `feat_extraction.py --world_size 1` and with
`--world_size N`, as a user would run it. Prints, per run, clips/s after start-up, whole
wall time and how long the first worker to run out of work waited for the last; then the
speed-up. `--quick`: tiny videos and model on the CPU (the tests run it).

    python3 bench/balance.py WORK --gpus 2 [--json OUT.json]"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SUMMARY = re.compile(r"summary: (\d+) done.*?\| (\d+) clips in ([\d.]+)s after ([\d.]+)s start-up = ([\d.]+) clips/s"
                     r"(?:.*?first worker out of work waited ([\d.]+)s \(([\d.]+)% of the run\))?")


def mixed_corpus(out: Path, count: int, min_s: float, max_s: float, kind: str, quick: bool) -> list[Path]:
    """`count` videos whose lengths are spread evenly from min_s to max_s, in shuffled order."""
    from concurrent.futures import ProcessPoolExecutor

    from corpus import KINDS, write

    out.mkdir(parents=True, exist_ok=True)
    width, height = (64, 48) if quick else KINDS[kind]
    seconds = np.random.default_rng(0).permutation(np.linspace(min_s, max_s, count))
    jobs = [(out / f"mixed_{i:02d}_{s:05.1f}s.mp4", int(s * 30), width, height) for i, s in enumerate(seconds)]
    with ProcessPoolExecutor(max_workers=8) as pool:
        list(pool.map(_write, [j for j in jobs if not j[0].exists()]))
    return [j[0] for j in jobs]


def _write(job):
    from corpus import write

    return write(*job)


def extract(data: Path, save: Path, ckpt: Path, world_size: int, extra: list) -> dict:
    cmd = [sys.executable, str(ROOT / "feat_extraction.py"), "--data_set", "charades", "--data_path", str(data),
           "--save_path", str(save), "--ckpt_path", str(ckpt), "--model_name", "auto", "--overwrite",
           "--world_size", str(world_size), *extra]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    m = SUMMARY.search(res.stdout)
    if res.returncode != 0 or m is None:
        sys.exit(f"run failed ({res.returncode}): {' '.join(cmd)}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    done, clips, busy, startup, rate, idle_s, idle_pct = m.groups()
    return {"world_size": world_size, "videos": int(done), "clips": int(clips), "busy_s": float(busy),
            "startup_s": float(startup), "clips_per_s": float(rate), "command_wall_s": round(wall, 2),
            "end_idle_s": float(idle_s or 0), "end_idle_pct": float(idle_pct or 0), "command": " ".join(cmd)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path)
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--min_s", type=float, default=10)
    ap.add_argument("--max_s", type=float, default=300)
    ap.add_argument("--kind", default="charades")
    ap.add_argument("--ckpt", type=Path, help="default: a random-weights llava_vit_base_ln made in WORK")
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: tiny videos, tiny model")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    extra = []
    if a.quick:
        from extractor.demo import random_checkpoint
        from extractor.model import ViTConfig

        ckpt = a.ckpt or random_checkpoint(a.work / "tiny.pt", ViTConfig(width=64, layers=1, head_dim=32, mlp_width=128))
        a.min_s, a.max_s, a.videos = min(a.min_s, 0.6), min(a.max_s, 2.0), min(a.videos, 6)
        extra = ["--device", "cpu", "--batch_clips", "4"]
    else:
        from checkpoints import random_backbone

        ckpt = a.ckpt or a.work / "base.pt"
        if not ckpt.exists():
            random_backbone(ckpt, "llava_vit_base_ln")
    data = a.work / "mixed"
    mixed_corpus(data, a.videos, a.min_s, a.max_s, a.kind, a.quick)
    runs = [extract(data, a.work / f"out_{n}", ckpt, n, extra) for n in (1, a.gpus)]
    one, many = runs
    speedup = many["clips_per_s"] / one["clips_per_s"]
    wall_speedup = one["command_wall_s"] / many["command_wall_s"]
    for r in runs:
        print(f"world_size {r['world_size']}: {r['videos']} videos, {r['clips']} clips | {r['clips_per_s']:.1f} clips/s "
              f"after {r['startup_s']:.1f}s start-up | command wall {r['command_wall_s']:.1f}s | first worker out of "
              f"work waited {r['end_idle_s']:.1f}s ({r['end_idle_pct']:.1f}% of the run)")
    print(f"speed-up x{speedup:.2f} (clips/s after start-up), x{wall_speedup:.2f} (whole command wall time)")
    if a.json:
        a.json.write_text(json.dumps({"runs": runs, "speedup": speedup, "wall_speedup": wall_speedup}, indent=1))


if __name__ == "__main__":
    main()
