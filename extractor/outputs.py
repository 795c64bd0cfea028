"""Feature files and the run's text records, all written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

FAILED_LIST = "failed_videos.txt"
MANIFEST = "manifest.jsonl"
_UMASK = os.umask(0)
os.umask(_UMASK)
MISSING_LIST = "missing_files.txt"


def output_name(stem: str, prefix: str, suffix: str, ext: str) -> str:
    return f"{prefix}{stem}{suffix}.{ext}"


def _atomic_write(path: Path, write) -> None:
    """write(fileobj) into a temporary file beside `path`, fsync, then rename over `path`:
    a killed run leaves either the old file, no file, or the whole new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def remove_partial_files(folder: Path) -> int:
    """Deletes the temporary files `_atomic_write` leaves when a run is killed mid-write, in
    `folder` and its subfolders."""
    removed = 0
    for path in folder.rglob(".*.tmp"):
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def save_features(path: Path, features: np.ndarray) -> None:
    features = np.ascontiguousarray(features, dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)  # nested outputs (--recursive, --video_list)
    if path.suffix == ".pt":
        import torch

        _atomic_write(path, lambda fh: torch.save(torch.from_numpy(features), fh))
    else:
        _atomic_write(path, lambda fh: np.save(fh, features, allow_pickle=False))


def load_features(path: Path) -> np.ndarray:
    if path.suffix == ".pt":
        import torch

        return torch.load(str(path), map_location="cpu", weights_only=True).numpy()
    return np.load(path, mmap_mode="r", allow_pickle=False)


def check_existing(path: Path, width: int) -> Optional[str]:
    """None if `path` holds a usable (num_clips, width) float32 feature array, else why not."""
    try:
        arr = load_features(path)
    except Exception as e:  # truncated, not an array, wrong format
        return f"does not load ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    if arr.ndim != 2 or arr.shape[1] != width or arr.shape[0] < 1:
        return f"has shape {tuple(arr.shape)}, expected (num_clips, {width})"
    if arr.dtype != np.float32:
        return f"has dtype {arr.dtype}, expected float32"
    return None


def write_lines(path: Path, lines: Iterable[str]) -> None:
    text = "".join(f"{line}\n" for line in lines)
    _atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def write_failed(save_path: Path, failures: dict[str, str]) -> None:
    """failed_videos.txt: one line per failed file, `name<TAB>reason`. Removed when nothing failed."""
    path = save_path / FAILED_LIST
    if failures:
        write_lines(path, (f"{name}\t{' '.join(reason.split())}" for name, reason in sorted(failures.items())))
    elif path.exists():
        path.unlink()


def annotated_videos(anno_file: Path) -> list[str]:
    """Video ids of an ActivityNet-style annotation file ({"database": {id: ...}})."""
    data = json.loads(anno_file.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
        raise ValueError("has no 'database' object")
    return list(data["database"])


def feature_ids(save_path: Path, prefix: str, suffix: str, ext: str) -> set[str]:
    """The video ids (file stems) that have a feature file in save_path or its subfolders."""
    end = f"{suffix}.{ext}"
    return {p.name[len(prefix):len(p.name) - len(end)] for p in save_path.rglob(f"*.{ext}")
            if p.name.startswith(prefix) and p.name.endswith(end) and len(p.name) > len(prefix) + len(end)}


def write_missing(save_path: Path, video_ids: list[str], prefix: str, suffix: str, ext: str) -> list[str]:
    """missing_files.txt: the annotated videos with no feature file (in any subfolder), one
    per line."""
    have = feature_ids(save_path, prefix, suffix, ext)
    missing = [v for v in video_ids if v not in have]
    write_lines(save_path / MISSING_LIST, missing)
    return missing


class Manifest:
    """manifest.jsonl beside the features: one JSON line per video a run finished or failed,
    appended as it happens (a later line for the same video supersedes an earlier one).
    Every line carries the run's settings, so that a line alone tells how its features
    were made and how clip rows map to time."""

    def __init__(self, save_path: Path, run_fields: dict):
        self.path = save_path / MANIFEST
        self.run_fields = run_fields
        self.written = 0  # lines this run added

    def add(self, entry: dict) -> None:
        line = json.dumps({**entry, **self.run_fields}, ensure_ascii=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.written += 1


def read_manifest(save_path: Path) -> dict[str, dict]:
    """The latest manifest entry of each video; a torn last line (a killed run) is skipped."""
    entries = {}
    path = save_path / MANIFEST
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            entries[entry["video"]] = entry
    return entries
