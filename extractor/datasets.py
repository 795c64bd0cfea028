"""Which videos a run covers, the names they go by, and where their features go.

A video's name is its path relative to --data_path with '/' separators ("clip.mp4",
"class_a/clip.mp4"), or, for a --video_list entry outside --data_path, its absolute path.
The name is what the queue, the events, the manifest and failed_videos.txt carry; a worker
opens `data_path / name` (an absolute name replaces data_path). Its features go to the same
relative folder under --save_path; a name outside --data_path writes to the top of
--save_path."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Optional

from .outputs import output_name
from .video import VIDEO_EXTENSIONS, list_videos


def find_videos(data_path: Path, recursive: bool) -> list[str]:
    """Names of the video files in data_path (by extension), sorted; with `recursive`, in its
    subfolders too (hidden folders are left out; a folder reached twice through symbolic
    links is read once). OSError if a folder cannot be read."""
    if not recursive:
        return [p.name for p in list_videos(data_path)]

    def fail(error: OSError):
        raise error

    names, seen = [], set()
    for root, folders, files in os.walk(data_path, onerror=fail, followlinks=True):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:
            folders[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        folders[:] = [f for f in folders if not f.startswith(".")]
        relative = PurePosixPath(Path(root).relative_to(data_path).as_posix())
        names += [str(relative / f) for f in files if Path(f).suffix.lower() in VIDEO_EXTENSIONS]
    return sorted(names)


def list_entry_name(entry: str, data_path: Path) -> str:
    """The name of a --video_list entry (absolute, or relative to data_path): relative to
    data_path when the file lies inside it, else its absolute path."""
    full = Path(os.path.normpath(os.path.abspath(data_path / entry)))
    try:
        return full.relative_to(os.path.abspath(data_path)).as_posix()
    except ValueError:
        return str(full)


def read_video_list(list_file: Path, data_path: Path) -> list[str]:
    """The names a --video_list file gives, in its order: one video per line, absolute or
    relative to data_path; blank lines and lines starting with '#' are skipped, a repeated
    video is taken once. OSError / UnicodeDecodeError if the file cannot be read."""
    names = {}
    for line in list_file.read_text(encoding="utf-8").splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            names.setdefault(list_entry_name(entry, data_path), None)
    return list(names)


def video_name(path: Path, data_path: Optional[Path]) -> str:
    """The name of the video at `path` (= data_path / name). Without a data_path (a caller
    that gives a flat folder's files), the file name."""
    if data_path is None:
        return path.name
    try:
        return path.relative_to(data_path).as_posix()
    except ValueError:
        return str(path)


def video_id(name: str) -> str:
    """The id annotation files use for a video: its file name without the extension."""
    return PurePosixPath(name).stem


def feature_relpath(name: str, prefix: str, suffix: str, ext: str) -> PurePosixPath:
    """Where a video's features go, relative to --save_path."""
    path = PurePosixPath(name)
    folder = PurePosixPath() if path.is_absolute() else path.parent
    return folder / output_name(path.stem, prefix, suffix, ext)


def output_collisions(names: Iterable[str], output_of: Callable[[str], PurePosixPath]) -> list[tuple[str, str, str]]:
    """(first name, second name, output) for every video whose output another video
    already has."""
    first, clashes = {}, []
    for name in names:
        out = str(output_of(name))
        if out in first:
            clashes.append((first[out], name, out))
        else:
            first[out] = name
    return clashes


def file_sizes(data_path: Path, names: Iterable[str]) -> dict[str, Optional[int]]:
    """Each video's file size in bytes; None for a file that does not exist."""
    sizes = {}
    for name in names:
        try:
            sizes[name] = os.stat(data_path / name).st_size
        except (FileNotFoundError, NotADirectoryError):
            sizes[name] = None
        except OSError:  # exists but cannot be read: its worker names the reason
            sizes[name] = 0
    return sizes
