"""The benchmark: one entry point for every GPU measurement of this project.

  python bench/run.py WORK                         # on a GPU: the stages below on both corpora
  python bench/run.py WORK --quick                 # tiny corpus and model on the CPU (a smoke test)
  python bench/run.py WORK --stages balance --gpus 2

Corpora (built in WORK, kept): charades-like 640x480 stride 4 and hacs-like 1280x720
stride 16, from a real video (--source, default bench/media/bigbuckbunny_720p.mp4:
scaled, looped to 1000 frames at 30 fps, H.264 crf 23, copied --copies times), or from
synthetic texture (--synthetic), which decodes several times slower.

Stages (--stages, comma-separated; default ceilings,model,e2e,fidelity):
  ceilings  decoding alone with the pipeline's own decoders: CPU processes, NVDEC sessions, both
            (or the plans --ceiling_plans names); then each again with the frames made model
            input ("+convert"; no model; --ceiling_passes picks either pass)
  model     the model alone on random clips already on the device (the default dtype, compiled)
  e2e       feat_extraction.py with default flags: its own summary line, beside the ceilings
  fidelity  pixels of the GPU colour conversion (from the CPU decoder's planes and from NVDEC)
            against FFmpeg's RGB, and per-clip cosine of the features against today's
            pixel-exact fp32 path
  original  the original program's pipeline and its plan (needs decord)
  levers    model-only settings one by one (dtype, attention kernel, compile modes: --levers)
  balance   one worker against --gpus workers on a mixed-length corpus (of each of --corpora)
  segments  NVDEC decoding long videos in segments against the CPU decoder, on encodings that
            keep decoder state differently (bench/segments.py)
  nvdec_frames  NVDEC's frames against FFmpeg's byte for byte, from the start and after seeks, on
            closed and open GOPs (bench/nvdec_frames.py)
  nvdec_calls  PyNvVideoCodec call by call: time, GIL held (alone and with the GPU busy), and
            NVDEC's CPU cost per frame (bench/nvdec_calls.py)
  nvdec_load  NVDEC's rate with the GPU idle and beside matrix products: on a side stream, and
            on 128, 120 and 112 SMs (green contexts; bench/nvdec_load.py)
  decoder_memory  what a CPU decoder process adds to a worker's memory at 720p (bench/decoder_memory.py;
            runs on the CPU too)
  hf_model  Hugging Face backbones of published shapes with random weights, model only, bf16, the
            pipeline's clip function and compile_blocks (--families, --sizes; bench/hf_models.py)
  real      corpora shaped like real datasets (bench/mixed.py: mixed sizes, codecs, rotations and
            lengths; the same videos all 640x480; an awkward set with broken files): the CLI runs
            --real names (each from a cold or a warm compile cache), --real_ceilings, the awkward
            set's features on every decoding path against fp32 CPU decoding (--real_fidelity),
            and --exits short runs counting abnormal exits (bench/real_data.py)
Every figure goes to --json; the summary table puts each end-to-end figure beside what bounds it."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from cli import run_cli  # noqa: E402
from extractor.model import ViTConfig  # noqa: E402

PRESETS = {"charades": 4, "hacs": 16}  # stride
QUICK_MODEL = ViTConfig(patch_size=16, width=64, layers=1, head_dim=64, mlp_width=128)


def say(text: str):
    print(text, flush=True)


def python(*args, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def build_corpus(work: Path, kind: str, a) -> list[Path]:
    """In a child process: this process must not load PyAV's FFmpeg beside PyNvVideoCodec's."""
    out = work / f"{kind}{'_synthetic' if a.synthetic else ''}"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; import corpus; "
            "kind, copies, frames, synthetic = sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == '1'; "
            "paths = corpus.make_corpus(Path(sys.argv[2]), kind, copies, frames / 30) if synthetic else "
            "corpus.from_video(Path(sys.argv[2]), kind, copies, frames, Path(sys.argv[7])); print(len(paths))")
    res = python("-c", code, BENCH, out, kind, a.copies[kind], a.frames, int(a.synthetic), a.source)
    if res.returncode != 0:
        sys.exit(f"corpus {kind} failed:\n{res.stderr[-3000:]}")
    return sorted(out.glob(f"{kind}_[0-9]*.mp4"))


MODELS = {"base": "llava_vit_base_ln", "large": "llava_vit_large_ln"}


def checkpoint(work: Path, quick: bool, model: str = "base") -> Path:
    """A random-weights checkpoint of MODELS[model] (--quick: a tiny model whatever `model`)."""
    ckpt = work / ("tiny.pt" if quick else f"{model}.pt")
    if not ckpt.exists():
        if quick:
            from extractor.demo import random_checkpoint

            random_checkpoint(ckpt, QUICK_MODEL)
        else:
            from checkpoints import random_backbone

            random_backbone(ckpt, MODELS[model])
    return ckpt


def ceiling_plans(spec: str) -> dict:
    """'cpu,nvdec,auto,auto6=auto:6' -> {name: (decoder, CPU decoder processes or 0 for the default)}."""
    plans = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, what = item.partition("=")
        decoder, _, processes = (what or name).partition(":")
        if decoder not in ("cpu", "nvdec", "auto") or (processes and not processes.isdigit()):
            raise SystemExit(f"--ceiling_plans: {item!r} is not NAME[=DECODER[:PROCESSES]] with DECODER cpu, nvdec or auto")
        plans[name] = (decoder, int(processes or 0))
    return plans


def stage_ceilings(videos: list[Path], stride: int, dev: torch.device, seconds: float,
                   spec: str = "cpu,nvdec,auto", passes: str = "decode,convert") -> dict:
    from ceilings import decode_only

    from extractor.launch import cores_available
    from extractor.decode.plan import plan_decoding
    from extractor.config import RunConfig

    plans = {}
    for name, (decoder, processes) in ceiling_plans(spec).items():
        cfg = RunConfig(save_path=Path("."), ckpt_path=Path("."), decoder=decoder, cpu_decoders=processes)
        plan = plan_decoding(cfg.decode_options(), dev, cores_available())
        if decoder != "cpu" and not plan.nvdec_sessions:
            continue
        plans[name] = plan
    from extractor.backbones import Preprocessing
    from extractor.video import InputMaker

    cuda = dev.type == "cuda"
    # the second pass makes the frames model input: the pipeline less the model
    converting = InputMaker(dev, Preprocessing(), torch.bfloat16 if cuda else torch.float32, compile=cuda)
    out = {}
    for maker, suffix, pass_name in ((None, "", "decode"), (converting, "+convert", "convert")):
        if pass_name not in passes.split(","):
            continue
        for name, plan in plans.items():
            r = out[name + suffix] = decode_only(videos, plan, stride, dev, maker=maker, seconds=seconds)
            window = f"{r['capped_s']:.0f} s from the first frames" if r["capped_s"] else "whole corpus"
            say(f"  ceiling {name + suffix:14s}: {r['frames_per_s']:8.0f} frames/s = {r['clips_per_s']:6.1f} clips/s "
                f"({window}; {r['plan']}; videos by decoder {r['videos_by_decoder']}"
                f"{'; FAILED ' + str(r['failed']) if r['failed'] else ''})")
    return out


def stage_model(ckpt: Path, dev: torch.device, quick: bool) -> dict:
    from extractor.config import RunConfig
    from extractor.engine import Engine

    cuda = dev.type == "cuda"
    cfg = RunConfig(save_path=Path("."), ckpt_path=ckpt, model_name="auto", device=dev.type,
                    dtype="bf16" if cuda else "fp32", compile=cuda, batch_clips=4 if quick else 64)
    engine = Engine(cfg, dev, lambda ev: None)
    batch = [torch.rand(*engine.clip_shape, device=dev).to(engine.dtype) for _ in range(engine.batch)]
    engine.result(engine.submit(batch))
    if cuda:
        torch.cuda.synchronize()
    clips, t0, done, in_flight = (8 if quick else 1280), time.perf_counter(), 0, []
    while done < clips:
        in_flight.append(engine.submit(batch))
        done += len(batch)
        if len(in_flight) > 1:
            engine.result(in_flight.pop(0))
    for handles in in_flight:
        engine.result(handles)
    wall = time.perf_counter() - t0
    r = {"clips": done, "wall_s": round(wall, 2), "clips_per_s": round(done / wall, 1), "compile_s": engine.compile_s}
    say(f"  model only ({ckpt.stem}): {r['clips_per_s']:.1f} clips/s ({cfg.dtype}"
        f"{f', compiled by blocks in {engine.compile_s:.1f}s' if cfg.compile else ''}, "
        f"batch {cfg.batch_clips})")
    return r


def parse_variants(spec: str) -> dict[str, tuple[list, dict]]:
    """--e2e: 'defaults;cpu=--decoder cpu;n7=--nvdec_sessions 7 SOME_ENV=1' ->
    {name: (CLI flags, environment)}; a token NAME=VALUE in capitals is an environment variable.
    --profile_s samples the run named 'profiled' if there is one, else 'defaults'."""
    out = {}
    for item in filter(None, (x.strip() for x in spec.split(";"))):
        name, _, rest = item.partition("=") if "=" in item.split()[0] else (item, "", "")
        flags, env = [], {}
        for token in rest.split():
            key, eq, value = token.partition("=")
            if eq and key.isupper():
                env[key] = value
            else:
                flags.append(token)
        out[name] = (flags, env)
    return out


def stage_e2e(kind: str, data: Path, work: Path, ckpt: Path, a) -> dict:
    """The CLI with default flags, and with each variant of --e2e."""
    out, variants = {}, parse_variants(a.e2e)
    profiled = "profiled" if "profiled" in variants else "defaults"  # py-spy slows what it samples
    for name, (extra, env) in variants.items():
        r = out[name] = run_cli(data, work / f"out_{kind}", ckpt, kind, extra, a.quick,
                                a.logs / f"e2e_{kind}_{name}.log", a.cli_timeout,
                                a.profile_s if name == profiled else 0, env)
        label = f"{name}: {' '.join(extra + [f'{k}={v}' for k, v in env.items()]) or 'default flags'}"
        if "error" in r:
            say(f"  end to end ({label}) FAILED: {r['error']}")
        else:
            say(f"  end to end ({label}): {r['clips_per_s']:.1f} clips/s after {r['startup_s']:.1f}s start-up "
                f"(+{r['shutdown_s']:.1f}s shutdown) | peak RAM per worker {r['peak_ram_gib']:.2f} GiB | "
                f"{r['decoding']} | videos by decoder {r['videos_by_decoder']}{nvdec_stopped(r)}")
    return out


def stage_fidelity(kind: str, videos: list[Path], work: Path, ckpt: Path, quick: bool, logs: Path,
                   features: str) -> dict:
    stride, sample = PRESETS[kind], videos[:1]
    out, ref = {}, work / f"pixels_{kind}.npz"
    res = python(BENCH / "fidelity.py", "pixels", *sample, "--save", ref, "--frames", 8)
    out["pixels_cpu_decoder"] = json.loads(res.stdout) if res.returncode == 0 else res.stderr[-2000:]
    say(f"  pixels, CPU decoder's planes -> RGB on the device vs FFmpeg: {out['pixels_cpu_decoder']}")
    if not quick and torch.cuda.is_available():
        res = python(BENCH / "fidelity.py", "nvdec", *sample, *sample, "--ref", ref)  # twice: a reconfigured decoder
        out["pixels_nvdec"] = json.loads(res.stdout) if res.returncode == 0 else res.stderr[-2000:]
        say(f"  pixels, NVDEC's NV12 -> RGB on the GPU vs FFmpeg: {out['pixels_nvdec']}")
    data = work / f"fidelity_{kind}"
    data.mkdir(exist_ok=True)
    # three videos, another preset's size among them where its corpus is built: one NVDEC
    # session decodes them in turn (its decoder reconfigured from file to file)
    others = [next(iter(sorted((work / k).glob(f"{k}_[0-9]*.mp4"))), None) for k in PRESETS if k != kind]
    for v in [*videos[:2], *filter(None, others)][:3]:
        target = data / v.name
        if not target.exists():
            target.symlink_to(v)
    res = python(BENCH / "fidelity.py", "reference", work / f"ref_{kind}", *sorted(data.glob("*.mp4")),
                 "--ckpt", ckpt, "--stride", stride)
    if res.returncode != 0:
        out["reference"] = res.stderr[-2000:]
        say(f"  reference FAILED: {out['reference']}")
        return out
    from fidelity import compare

    if kind not in features:
        return out
    runs = {"default": [], "fp32_cpu_decoder": ["--dtype", "fp32", "--decoder", "cpu"]}
    if not quick and torch.cuda.is_available():
        runs["fp32_nvdec"] = ["--dtype", "fp32", "--decoder", "nvdec", "--nvdec_sessions", "1"]
        # each video in 5 segments, which NVDEC sessions reach by seeking
        runs["fp32_nvdec_segments"] = ["--dtype", "fp32", "--decoder", "nvdec", "--nvdec_sessions", "2",
                                       "--segment_frames", "200"]
    for name, extra in runs.items():
        r = run_cli(data, work / f"fid_{kind}_{name}", ckpt, kind, extra, quick, logs / f"fidelity_{kind}_{name}.log")
        if "error" in r:
            out[name] = r
            say(f"  features {name} FAILED: {r['error']}")
            continue
        out[name] = {**compare(work / f"fid_{kind}_{name}", work / f"ref_{kind}"),
                     "videos_by_decoder": r["videos_by_decoder"]}
        c = out[name]
        say(f"  features {name:16s} vs today's path in fp32: per-clip cosine min {c['cos_min']:.7f} mean "
            f"{c['cos_mean']:.7f}, relative error max {c['rel_err_max']:.2e} ({c['clips']} clips, "
            f"decoders {c['videos_by_decoder']}{nvdec_stopped(r)})")
        if name.startswith("fp32_nvdec") and "fp32_cpu_decoder" in out and "error" not in out["fp32_cpu_decoder"]:
            # same pixels and the same fp32 model: these should agree to the model's own
            # run-to-run noise, far below what a frame off by one or two does (6.6e-3, 2026-11-27)
            d = out[name]["vs_fp32_cpu_decoder"] = compare(work / f"fid_{kind}_{name}", work / f"fid_{kind}_fp32_cpu_decoder")
            say(f"  features {name:16s} vs fp32_cpu_decoder: per-clip cosine min {d['cos_min']:.7f}, relative "
                f"error max {d['rel_err_max']:.2e}")
    return out


def nvdec_stopped(run: dict) -> str:
    return f"; NVDEC stopped on {run['nvdec_stopped']} videos (the CPU took them over)" if run.get("nvdec_stopped") else ""


def stage_original(kind: str, videos: list[Path], ckpt: Path, dev: torch.device) -> dict:
    from original import run_original

    stride = PRESETS[kind]
    out = {}
    for name, planned in (("original_fp32_b20", False), ("original_planned", True)):
        r = run_original(videos, ckpt, dev, 16, stride, planned, 8)
        say(f"  {name}: {r['clips_per_s']:.1f} clips/s (GPU busy {r['gpu_busy']:.0%})")
        out[name] = r
    return out


def table(results: dict):
    say("\nsummary (clips/s; decoded frames/s = clips/s x min(stride, 16)):")
    for kind, r in results.items():
        e2e, step = (r.get("e2e") or {}).get("defaults") if isinstance(r, dict) else None, min(PRESETS.get(kind, 16), 16)
        if not e2e or "error" in e2e:
            continue
        model = r.get("model", {}).get("clips_per_s")
        ceil = r.get("ceilings", {})
        parts = [f"{kind}: end to end {e2e['clips_per_s']:.1f} clips/s ({e2e['clips_per_s'] * step:.0f} frames/s)"]
        if model:
            parts.append(f"{e2e['clips_per_s'] / model:.0%} of model-only {model:.1f}")
        for name, c in ceil.items():
            parts.append(f"{e2e['clips_per_s'] * step / c['frames_per_s']:.0%} of the {name} decode ceiling "
                         f"{c['frames_per_s']:.0f}")
        if "cpu" in ceil and "nvdec" in ceil:
            total = ceil["cpu"]["frames_per_s"] + ceil["nvdec"]["frames_per_s"]
            parts.append(f"{e2e['clips_per_s'] * step / total:.0%} of cpu + nvdec ceilings {total:.0f}")
        parts.append(f"peak RAM per worker {e2e['peak_ram_gib']:.2f} GiB")
        say(" | ".join(parts))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path, nargs="?", help="folder for corpora and outputs (default: a temporary one)")
    ap.add_argument("--quick", action="store_true", help="tiny corpus and model on the CPU")
    ap.add_argument("--stages", default="ceilings,model,e2e,fidelity")
    ap.add_argument("--corpora", default="hacs,charades")
    ap.add_argument("--copies", default="charades=32,hacs=96", help="videos per corpus")
    ap.add_argument("--frames", type=int, default=1000, help="frames per video (30 fps)")
    ap.add_argument("--source", type=Path, default=BENCH / "media" / "bigbuckbunny_720p.mp4")
    ap.add_argument("--synthetic", action="store_true", help="synthetic texture instead of --source")
    ap.add_argument("--gpus", type=int, default=2, help="balance: workers of the second run")
    ap.add_argument("--balance_videos", type=int, default=16, help="balance: videos of 10 s to 5 min")
    ap.add_argument("--levers", default=None, help="levers: comma-separated settings of bench/model_speed.py")
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument("--logs", type=Path, help="folder for the CLI runs' logs (default WORK/logs)")
    ap.add_argument("--e2e", default="defaults", help="e2e: runs separated by ';', each NAME or NAME=FLAGS "
                                                       "(capitalised NAME=VALUE tokens: environment), e.g. "
                                                       "'defaults;cpu=--decoder cpu'")
    ap.add_argument("--ceiling_s", type=float, default=20, help="ceilings: seconds each decoder plan runs "
                                                                 "from its first frames (0: the whole corpus)")
    ap.add_argument("--ceiling_plans", default="cpu,nvdec,auto",
                    help="ceilings: decoder plans, each NAME[=DECODER[:PROCESSES]], e.g. 'nvdec,auto,auto4=auto:4' "
                         "(auto with 4 CPU decoder processes)")
    ap.add_argument("--ceiling_passes", default="decode,convert",
                    help="ceilings: 'decode' (decoding alone), 'convert' (frames made model input), or both")
    ap.add_argument("--cli_timeout", type=float, default=1200, help="seconds before a CLI run is stopped")
    ap.add_argument("--profile_s", type=float, default=0, help="e2e and balance: seconds of py-spy samples of "
                                                                         "the workers")
    ap.add_argument("--fidelity_features", default="hacs,charades", help="fidelity: corpora whose features are "
                                                                          "compared (pixels are, on every corpus)")
    ap.add_argument("--models", default="base", help="model: the models timed alone (base, large)")
    ap.add_argument("--real", default="mixed=mixed:charades:base;uniform=uniform:charades:base;"
                                      "awkward=awkward:charades:base:warm;awkward_cpu=awkward:charades:base:warm "
                                      "--decoder cpu",
                    help="real: runs separated by ';', each NAME=CORPUS:PRESET:MODEL[:warm] [FLAGS] with CORPUS "
                         "mixed, uniform or awkward, PRESET charades or hacs, MODEL base or large; 'warm' reuses the "
                         "compile cache of that model's last run, else the run starts from an empty one")
    ap.add_argument("--real_ceilings", default="", help="real: corpora (mixed, uniform) whose decode ceiling with "
                                                        "conversions is measured (the default plan, --ceiling_s)")
    ap.add_argument("--real_fidelity", action="store_true", help="real: the awkward set's features on every path")
    ap.add_argument("--exits", type=int, default=0, help="real: short default runs in a row, counting abnormal exits")
    ap.add_argument("--families", default="clip,siglip,dinov2,dinov3,aimv2,videomae,vjepa2",
                    help="hf_model: the Hugging Face families timed (bench/hf_models.py)")
    ap.add_argument("--sizes", default="base,large", help="hf_model: sizes (base, large; AIMv2 and V-JEPA 2, "
                                                            "which have no base, give large and huge)")
    ap.add_argument("--hf_batch", type=int, default=64, help="hf_model: clips per call (halved on out-of-memory)")
    ap.add_argument("--real_scale", type=float, default=1.0, help="real: video lengths times this")
    a = ap.parse_args()
    a.copies = {k: int(v) for k, v in (item.split("=") for item in a.copies.split(","))}
    work = a.work or Path(tempfile.mkdtemp(prefix="featbench_"))
    work.mkdir(parents=True, exist_ok=True)
    a.logs = a.logs or work / "logs"
    a.logs.mkdir(parents=True, exist_ok=True)
    stages = set(a.stages.split(","))
    if a.quick:
        a.copies, a.frames = {k: 2 for k in a.copies}, 40
    dev = torch.device("cuda", 0) if torch.cuda.is_available() and not a.quick else torch.device("cpu")
    say(f"device {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'} | torch {torch.__version__} | "
        f"{'quick: tiny random model' if a.quick else 'llava_vit_base_ln, random weights'} | "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    results: dict = {}
    if "levers" in stages:
        from model_speed import DEFAULT_LEVERS, levers

        results["levers"] = levers(settings=a.levers or DEFAULT_LEVERS, attention=True)
    if "balance" in stages:
        from balance import KINDS, run_balance

        results["balance"] = run_balance(work, a.gpus, quick=a.quick, source=a.source, logs=a.logs,
                                         timeout=a.cli_timeout, profile_s=a.profile_s, count=a.balance_videos,
                                         kinds=tuple(k for k in KINDS if k in a.corpora.split(",")))
    if "segments" in stages:
        from segments import run_segments

        results["segments"] = run_segments(work, a.source, a.logs, say)
    if "nvdec_frames" in stages:
        from nvdec_frames import run_nvdec_frames

        results["nvdec_frames"] = run_nvdec_frames(work, a.source, say)
    if "nvdec_calls" in stages:
        from nvdec_calls import run_nvdec_calls

        results["nvdec_calls"] = run_nvdec_calls(work, a.source, say)
    if "decoder_memory" in stages:
        from decoder_memory import run_decoder_memory

        results["decoder_memory"] = run_decoder_memory(work, a.source, say)
    if "hf_model" in stages:
        from hf_models import run_hf_models

        results["hf_model"] = run_hf_models(a.families.split(","), a.sizes.split(","), dev, a.quick, a.hf_batch, say)
    standalone = {"balance", "levers", "segments", "nvdec_frames", "nvdec_calls", "decoder_memory", "real", "hf_model"}
    ckpt = checkpoint(work, a.quick) if stages - standalone else None
    model = None
    if "model" in stages:
        for name in a.models.split(","):
            results[f"model_{name}"] = stage_model(checkpoint(work, a.quick, name), dev, a.quick)
        model = results.get("model_base")
    if "real" in stages:
        from real_data import parse_runs, run_real

        used = {run["model"] for run in parse_runs(a.real)} | {"base"}
        ckpts = {name: checkpoint(work, a.quick, name) for name in MODELS if name in used}
        results["real"] = run_real(work, ckpts, a.real, a.logs, a.cli_timeout, say, a.exits, a.real_fidelity,
                                   a.real_scale, tuple(filter(None, a.real_ceilings.split(","))))
        for corpus in filter(None, a.real_ceilings.split(",")):
            videos = sorted((work / "corpora" / corpus).iterdir())
            say(f"{corpus}: decode ceiling with conversions ({len(videos)} videos)")
            results["real"][f"ceiling_{corpus}"] = stage_ceilings(videos, PRESETS["charades"], dev, a.ceiling_s,
                                                                  "auto", "convert")
    for kind in a.corpora.split(","):
        if not stages - standalone - {"model"}:
            break
        videos = build_corpus(work, kind, a)
        say(f"{kind}: {len(videos)} videos of {a.frames} frames, stride {PRESETS[kind]}")
        r = results[kind] = {"videos": len(videos)}
        if model:
            r["model"] = model
        if "e2e" in stages:
            r["e2e"] = stage_e2e(kind, videos[0].parent, work, ckpt, a)
        if "ceilings" in stages:
            r["ceilings"] = stage_ceilings(videos, PRESETS[kind], dev, a.ceiling_s, a.ceiling_plans, a.ceiling_passes)
        if "fidelity" in stages:
            r["fidelity"] = stage_fidelity(kind, videos, work, ckpt, a.quick, a.logs, a.fidelity_features)
        if "original" in stages:
            r["original"] = stage_original(kind, videos, ckpt, dev)
        if "nvdec_load" in stages:
            from nvdec_load import run_nvdec_load

            r["nvdec_load"] = run_nvdec_load(videos, say)
    table(results)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
