"""Per-clip cosine similarity between two folders of feature files (same names)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def compare(test_dir: Path, ref_dir: Path) -> dict:
    cos, rel, files = [], [], 0
    for ref_file in sorted(ref_dir.glob("*.npy")):
        a, b = np.load(test_dir / ref_file.name), np.load(ref_file)
        assert a.shape == b.shape, (ref_file.name, a.shape, b.shape)
        cos.append(cosine_rows(a, b))
        rel.append(np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1))
        files += 1
    cos, rel = np.concatenate(cos), np.concatenate(rel)
    return {"files": files, "clips": int(cos.size), "cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
            "rel_err_max": float(rel.max()), "rel_err_mean": float(rel.mean())}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("test", type=Path)
    ap.add_argument("reference", type=Path)
    a = ap.parse_args()
    r = compare(a.test, a.reference)
    print(f"{r['files']} files, {r['clips']} clips: cosine min {r['cos_min']:.6f} mean {r['cos_mean']:.6f} | "
          f"relative error max {r['rel_err_max']:.2e} mean {r['rel_err_mean']:.2e}")
