"""Runs on corpora shaped like real datasets (bench/mixed.py): the CLI with default flags on
the mixed corpus beside the uniform one, the awkward set with the defaults and with
--decoder cpu, start-up from a cold and a warm compile cache, the features of every path
against fp32 CPU decoding, and repeated short runs that count abnormal exits.

Each run is one feat_extraction.py process; what is read from its log:
  clips/s, start-up ('ready after', and the worker's parts: device, load, decoders,
  compile, conversions, rate), compilations after 'ready' (TORCH_LOGS=recompiles lines, and
  calls that ran eagerly because a compiled graph was missing), other libraries' log lines
  on the terminal, and the signs of an abnormal exit (a worker death, a C++ stack, a
  Python traceback, a leaked-resource warning)."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from cli import run_cli  # noqa: E402
from fidelity import compare  # noqa: E402

STRIDE = {"charades": 4, "hacs": 16}
READY = re.compile(r"ready after ([\d.]+)s(?: \(worker: ([^)]*)\))?")
# what must never reach a user's terminal after a run that finished its work
ABNORMAL = {
    "worker deaths": re.compile(r"worker (died|stopped)"),
    "C++ stacks": re.compile(r"terminate called|c10::|frame #\d+:|Exception raised from"),
    "Python tracebacks": re.compile(r"^Traceback \(most recent call last\)", re.M),
    "leaked resources": re.compile(r"leaked (semaphore|shared_memory)|resource_tracker"),
}
LIBRARY_LINES = re.compile(r"^\[(TRACE|DEBUG|INFO|WARN|WARNING|ERROR|FATAL) *\]\[\d\d:\d\d:\d\d\]|^Svt\[", re.M)


def read_log(text: str) -> dict:
    """What a run's log says beyond its summary line."""
    ready = READY.search(text)
    after = text[ready.end():] if ready else ""
    eager = re.search(r"warning: (\d+) calls ran eagerly", text)
    out = {
        "ready_after_s": float(ready.group(1)) if ready else None,
        "startup_parts": ready.group(2) if ready and ready.group(2) else "",
        "recompiles_after_ready": len(re.findall(r"Recompiling function", after)),
        "eager_calls": int(eager.group(1)) if eager else 0,
        "library_lines": len(LIBRARY_LINES.findall(text)),
        "failed_videos": re.findall(r"FAILED (\S+):", text),
    }
    out.update({name: len(pattern.findall(text)) for name, pattern in ABNORMAL.items()})
    return out


def one_run(name: str, data: Path, work: Path, ckpt: Path, preset: str, flags: list, cache: Path, logs: Path,
            timeout: float, say, env: dict = None) -> dict:
    """feat_extraction.py on `data` with its compile cache in `cache` (an empty folder: a
    first run), TORCH_LOGS=recompiles."""
    cache.mkdir(parents=True, exist_ok=True)
    env = {"TORCHINDUCTOR_CACHE_DIR": str(cache), "TRITON_CACHE_DIR": str(cache / "triton"),
           "TORCH_LOGS": "recompiles", **(env or {})}
    out = work / f"out_{name}"
    r = run_cli(data, out, ckpt, preset, flags, False, logs / f"real_{name}.log", timeout, 0, env)
    text = (logs / f"real_{name}.log").read_text(errors="replace")
    r.update(read_log(text))
    r["out"] = str(out)
    abnormal = {k: r[k] for k in ABNORMAL if r[k]}
    if "error" in r:
        say(f"  {name}: FAILED {r['error'][-600:]}")
    else:
        say(f"  {name}: {r['clips_per_s']:.1f} clips/s | ready after {r['ready_after_s']}s ({r['startup_parts']}) | "
            f"{r['videos']} done, {r['failed']} failed {r['failed_videos']} | recompiles after ready "
            f"{r['recompiles_after_ready']}, eager calls {r['eager_calls']} | library lines {r['library_lines']} | "
            f"abnormal {abnormal or 'none'} | decoders {r['videos_by_decoder']}")
    return r


def parse_runs(spec: str) -> list[dict]:
    """--real: 'NAME=CORPUS:PRESET:MODEL[:warm] [FLAGS...];...' -> one dict per run."""
    runs = []
    for item in filter(None, (x.strip() for x in spec.split(";"))):
        name, rest = item.split("=", 1)
        what, *flags = rest.split()
        corpus, preset, model, *warm = what.split(":")
        runs.append({"name": name, "corpus": corpus, "preset": preset, "model": model, "warm": bool(warm),
                     "flags": flags})
    return runs


def run_real(work: Path, ckpts: dict, runs: str, logs: Path, timeout: float, say, exits: int = 0,
             fidelity: bool = False, scale: float = 1.0, also_build: tuple = ()) -> dict:
    """`runs`: items separated by ';', each NAME=CORPUS:PRESET:MODEL[:warm] [FLAGS...] (warm:
    the compile cache of the last run of that model, else a fresh one); `ckpts`: model ->
    checkpoint path. `exits`: that many short default runs (warm cache) on the awkward set's
    valid files, counting abnormal exits. `fidelity`: the awkward set through auto, cpu and
    nvdec in fp32, and the defaults, against fp32 CPU decoding uncompiled. `also_build`:
    corpora to build though no run uses them (for the decode ceilings)."""
    import subprocess

    runs = parse_runs(runs)
    needed = {run["corpus"] for run in runs} | set(also_build)
    if exits or fidelity:
        needed.add("awkward")
    corpora = {}
    for kind in ("awkward", "uniform", "mixed"):
        if kind in needed:
            res = subprocess.run([sys.executable, str(BENCH / "mixed.py"), str(work / "corpora"), "--kinds", kind,
                                  "--scale", str(scale)], capture_output=True, text=True)
            if res.returncode != 0:
                raise SystemExit(f"corpus {kind} failed:\n{res.stderr[-3000:]}")
            corpora[kind] = work / "corpora" / kind
            say(f"corpus {kind}: {len(list(corpora[kind].iterdir()))} files")
    results, caches, fresh = {}, {}, 0
    for run in runs:
        name, model = run["name"], run["model"]
        if not run["warm"] or model not in caches:
            fresh += 1
            caches[model] = work / f"cache{fresh}"
        results[name] = one_run(name, corpora[run["corpus"]], work, ckpts[model], run["preset"], run["flags"],
                                caches[model], logs, timeout, say)
        results[name].update(corpus=run["corpus"], preset=run["preset"], model=model,
                             cache="warm" if run["warm"] else "cold")
    if fidelity:
        results["fidelity"] = awkward_fidelity(corpora["awkward"], work, ckpts["base"], logs, timeout, say)
    if exits:
        results["exits"] = repeated_runs(corpora["awkward"], work, ckpts["base"], logs, timeout, say, exits,
                                         caches.get("base") or work / "cache_exits")
    return results


FIDELITY_RUNS = {
    "reference": ["--decoder", "cpu", "--dtype", "fp32", "--no-compile"],
    "auto_fp32": ["--dtype", "fp32"],
    "cpu_fp32": ["--decoder", "cpu", "--dtype", "fp32"],
    "nvdec_fp32": ["--decoder", "nvdec", "--dtype", "fp32"],
    "defaults": [],
}


def awkward_fidelity(data: Path, work: Path, ckpt: Path, logs: Path, timeout: float, say) -> dict:
    import torch

    out = {}
    for name, flags in FIDELITY_RUNS.items():
        if "nvdec" in name and not torch.cuda.is_available():
            continue
        out[name] = one_run(f"fid_{name}", data, work, ckpt, "charades", flags, work / "cache_fidelity", logs,
                            timeout, say)
        if name != "reference" and "error" not in out[name] and "error" not in out["reference"]:
            c = out[name]["vs_reference"] = compare(Path(out[name]["out"]), Path(out["reference"]["out"]))
            say(f"    {name} vs fp32 CPU decoding (uncompiled): per-clip cosine min {c['cos_min']} over {c['clips']} "
                f"clips; lowest files {c['worst_files']}; missing {c['missing'] or 'none'}")
    return out


def repeated_runs(awkward: Path, work: Path, ckpt: Path, logs: Path, timeout: float, say, count: int,
                  cache: Path) -> dict:
    """`count` short runs with default flags in a row (the awkward set's first valid files,
    a broken one among them), counting the runs that ended abnormally and why."""
    data = work / "exits_data"
    if not data.exists():
        data.mkdir()
        for name in ("a_hevc8.mp4", "a_vp9.webm", "a_rotated90.mp4", "a_vfr_mkv.mkv", "a_10_frames.mp4", "b_text.mp4"):
            shutil.copy(awkward / name, data / name)
    tally = {k: 0 for k in ABNORMAL}
    bad_runs, codes = [], []
    for i in range(count):
        r = one_run(f"exit{i:02d}", data, work, ckpt, "charades", [], cache, logs, timeout, say)
        codes.append(r.get("exit_code"))
        signs = {k: r.get(k, 0) for k in ABNORMAL if r.get(k)}
        if signs or "error" in r:
            bad_runs.append({"run": i, **signs, **({"error": r["error"][-300:]} if "error" in r else {})})
        for k in tally:
            tally[k] += r.get(k, 0)
    say(f"  exits: {count} default runs, {len(bad_runs)} abnormal; signs {tally}; exit codes {sorted(set(map(str, codes)))}"
        + (f"; first abnormal {bad_runs[0]}" if bad_runs else ""))
    return {"runs": count, "abnormal_runs": bad_runs, "signs": tally, "exit_codes": codes}
