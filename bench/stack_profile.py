"""Reads bench/stack_sampler's files: where each thread of a process spent a window of
its start-up, by function, inclusive (a function's share of the samples whose stack holds it).

    python bench/stack_profile.py DIR [--until S] [--threads MainThread,weights] [--top 25]
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

IDLE = ("threading.py:wait", "queue.py:get", "selectors.py:select", "connection.py:_recv", "threading.py:join")


def read_samples(path: Path):
    """(argv, {stack id: [frames]}, [(t, thread, stack id)])."""
    argv, stacks, samples = "", {}, []
    for line in path.read_text().splitlines():
        if line.startswith("# argv"):
            argv = line[7:]
        elif line.startswith("S "):
            _, i, stack = line.split(" ", 2)
            stacks[int(i)] = stack.split(";")
        elif line.startswith("T "):
            _, t, name, i = line.split(" ")
            samples.append((float(t), name, int(i)))
    return argv, stacks, samples


def inclusive(stacks, samples, thread: str, since: float, until: float, period: float) -> collections.Counter:
    """Seconds per function of `thread`'s busy samples from `since` to `until` (idle waits left out)."""
    seconds: collections.Counter = collections.Counter()
    for t, name, i in samples:
        stack = stacks.get(i)  # (None: a sample taken after its file's table, by an older sampler)
        if stack is None or name != thread or not since <= t <= until or (stack and stack[-1] in IDLE):
            continue
        for frame in set(stack):
            seconds[frame] += period
    return seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("--since", type=float, default=0.0, help="seconds into the sampling to read from")
    ap.add_argument("--until", type=float, default=60.0, help="seconds into the sampling to read to")
    ap.add_argument("--last", type=float, default=0.0, help="read only the last this many seconds of each process")
    ap.add_argument("--threads", default="MainThread,weights")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--match", default="pipeline.py", help="only processes whose stacks name this file")
    args = ap.parse_args()
    for path in sorted(args.folder.glob("stacks.*.txt")):
        argv, stacks, samples = read_samples(path)
        if not any(args.match in f for s in stacks.values() for f in s):
            continue
        times = sorted({t for t, _, _ in samples})
        period = (times[-1] - times[0]) / max(1, len(times) - 1) if len(times) > 1 else 0.01
        since, until = (times[-1] - args.last, times[-1]) if args.last else (args.since, args.until)
        print(f"== {path.name} ({argv[:100]}): {len(times)} samples over {times[-1]:.1f}s, one per "
              f"{period * 1e3:.1f} ms; reading {since:.1f}-{until:.1f}s")
        for thread in args.threads.split(","):
            seconds = inclusive(stacks, samples, thread, since, until, period)
            print(f"-- {thread}: busy {max(seconds.values(), default=0):.2f}s")
            for frame, s in seconds.most_common(args.top):
                print(f"   {s:7.2f}s  {frame}")


if __name__ == "__main__":
    main()
