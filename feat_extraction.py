#!/usr/bin/env python3
"""Per-video clip features for temporal action detection, with a LLaVA-ViT video encoder or a Hugging Face
image or video backbone (docs/BACKBONES.md).

Slides clips of 16 frames over every video in --data_path, runs the encoder on batches of
clips on every GPU (one process each) and writes one float32 (num_clips, C) array per video.
Run `python feat_extraction.py --help` for the flags, `--demo` for a self-contained demo.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import sys
import threading
from pathlib import Path

from extractor.worker_server import gpu_present, start_worker_server, stop_worker_server

PRESETS = {  # data_set -> (clip_len, stride)
    "thumos": (16, 4),
    "charades": (16, 4),
    "fineaction": (16, 16),
    "hacs": (16, 16),
}


class UsageError(Exception):
    """Bad flags or inputs found before any work: one line, exit status 2."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def count_or_zero(text: str) -> int:
    return 0 if text.strip() == "0" else positive_int(text)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag gets one line (not the whole usage) and exit status 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from extractor.variants import VARIANTS

    p = OneLineParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    io = p.add_argument_group("data (the original script's flags)")
    io.add_argument("--data_set", choices=sorted(PRESETS),
                    help="dataset preset: clip length 16; stride 4 for thumos/charades, 16 for fineaction/hacs")
    io.add_argument("--data_path", type=Path,
                    help="folder of videos (its subfolders too with --recursive); --video_list entries are relative to it")
    which = io.add_mutually_exclusive_group()
    which.add_argument("--video_list", type=Path,
                       help="text file naming the videos to process, one per line, absolute or relative to --data_path "
                            "(blank lines and # comments skipped); features of a video in a subfolder of --data_path go "
                            "to the same subfolder of --save_path, those of a video outside it to --save_path itself")
    which.add_argument("--recursive", action="store_true",
                       help="take the videos in the subfolders of --data_path too; features keep the folder layout "
                            "under --save_path")
    io.add_argument("--save_path", type=Path, help="folder for the feature files (created if missing)")
    io.add_argument("--anno_file", type=Path,
                    help="ActivityNet-style JSON ({'database': {...}}): write missing_files.txt listing annotated "
                         "videos that have no feature file")
    io.add_argument("--prefix", default="", help="output file name prefix")
    io.add_argument("--suffix", default="", help="output file name suffix (before the extension)")
    io.add_argument("--ext", default="npy", choices=["npy", "pt"], help="output format/extension")
    m = p.add_argument_group("model")
    m.add_argument("--model_type", default="llavavit", choices=["llavavit", "hf", "dinov3"],
                   help="backbone family: llavavit (LLaVA-ViT video encoder); hf (a local Hugging Face transformers "
                        "folder, its family from config.json: CLIP, MetaCLIP 2, SigLIP, DINOv2, DINOv3, AIMv2 run per "
                        "frame and averaged over the clip; VideoMAE, V-JEPA 2 run per clip; see docs/BACKBONES.md); "
                        "dinov3 (the hf path for DINOv3 folders only)")
    m.add_argument("--model_name", default="llava_vit_base_ln", choices=[*VARIANTS, "auto"],
                   help="architecture of a backbone.pt checkpoint ('auto': read it off the checkpoint's shapes); "
                        "ignored for Hugging Face folders, whose config.json gives it")
    m.add_argument("--ckpt_path", type=Path,
                   help="llavavit: backbone.pt state dict (.pt/.pth/.safetensors) or a OneVision-Encoder Hugging Face "
                        "folder; hf, dinov3: a local Hugging Face model folder (config.json and weights; never "
                        "downloaded; a two-tower folder such as CLIP's runs its vision tower)")
    m.add_argument("--model_key", default=None,
                   help="key of the state dict inside the checkpoint (default: unwrap model/state_dict/module)")
    m.add_argument("--temporal_positions", choices=["contiguous", "spread64"], default=None,
                   help="rotary time coordinate of a clip's frames (default: contiguous for backbone.pt, "
                        "spread64 for Hugging Face folders)")
    m.add_argument("--pooling", choices=["pooler", "cls", "mean"], default=None,
                   help="hf, dinov3: a frame's (image models) or clip's (video models) feature: the model's pooled "
                        "output, token 0 of the last hidden state, or the mean of its patch tokens (class and register "
                        "tokens left out). Default: pooler where the model has one (CLIP, SigLIP, DINOv2/v3, AIMv2 "
                        "with its head), else mean (VideoMAE, V-JEPA 2)")
    c = p.add_argument_group("clips and preprocessing")
    c.add_argument("--clip_len", type=positive_int, help="frames per clip (overrides the preset)")
    c.add_argument("--stride", type=positive_int, help="frames between clip starts (overrides the preset)")
    c.add_argument("--normalize", choices=["none", "clip"], default=None,
                   help="llavavit default 'none' reproduces the original script (RGB/255); 'clip' applies CLIP "
                        "mean/std. hf, dinov3 default: the folder's (video_)preprocessor_config.json mean/std, none "
                        "without one; either choice overrides it")
    r = p.add_argument_group("run")
    r.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda if available, else cpu")
    r.add_argument("--world_size", type=positive_int, default=None,
                   help="worker processes, one per GPU (default: all visible GPUs; 1 on cpu). Under torchrun or "
                        "srun leave it out: each process they start is one worker")
    r.add_argument("--batch_clips", type=positive_int, default=64, help="clips per forward pass")
    r.add_argument("--dtype", choices=["auto", "fp32", "tf32", "fp16", "bf16"], default="auto",
                   help="model precision (auto: bf16 on cuda, fp32 on cpu)")
    r.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on for cuda, off for cpu)")
    r.add_argument("--decoder", choices=["auto", "cpu", "decord", "nvdec"], default="auto",
                   help="auto: CPU decoder processes (FFmpeg through PyAV) and, on a GPU with PyNvVideoCodec, NVDEC "
                        "sessions side by side, sized from the machine; cpu: the processes only; decord: processes "
                        "reading with decord, the original's decoder (same pixels); nvdec: NVDEC for every video it "
                        "can take, one process for the rest. Every choice gives the original's pixels")
    r.add_argument("--cpu_decoders", "--parallel_videos", type=positive_int, default=None,
                   help="decoder processes per worker (default: the cores of the worker's share of the node, minus "
                        "one; half its cores beside NVDEC sessions)")
    r.add_argument("--nvdec_sessions", type=positive_int, default=None,
                   help="NVDEC sessions per worker (default: 3 per 2 decoder engines of the GPU, 10 on an H100)")
    r.add_argument("--nvdec_sms", type=count_or_zero, default=4,
                   help="SMs the model leaves free while NVDEC sessions run: NVDEC's per-frame GPU work waits for a "
                        "free SM, so beside a model on every SM it decodes at less than half its rate (a CUDA green "
                        "context; 0: the model runs on every SM)")
    r.add_argument("--num_threads", type=positive_int, default=None,
                   help="FFmpeg threads per video (default: from the load, 1 when every decoder is busy, up to 4)")
    r.add_argument("--decode_buffer_mb", type=positive_int, default=48,
                   help="shared memory per decoder process for decoded frames on their way to the GPU")
    r.add_argument("--segment_frames", type=count_or_zero, default=1500,
                   help="a video of twice as many frames or more (in MP4/MOV or Matroska/WebM, with a timestamp per "
                        "frame) is decoded in segments of about this many frames, on several decoder processes at "
                        "once, each from a keyframe (same frames, checked against the container's index); 0: never")
    r.add_argument("--overwrite", action="store_true", help="recompute videos whose feature file exists")
    r.add_argument("--decode_timeout_s", type=positive_int, default=600,
                   help="a video whose decoding makes no progress for this long is taken as hung: its worker process "
                        "is restarted and the video tried once more (then recorded as failed)")
    r.add_argument("--lost_after_s", type=positive_int, default=120,
                   help="torchrun/srun runs: seconds without a heartbeat after which process 0 treats another "
                        "process (a node that died) as lost and records the videos it held as failed")
    r.add_argument("--log_every_s", type=positive_int, default=60,
                   help="seconds between progress lines in run.log, and on stderr when it is not a terminal "
                        "(nohup, Slurm; a terminal gets a progress bar)")
    r.add_argument("--verbose", action="store_true",
                   help="let other libraries' own log lines through (PyNvVideoCodec's warnings, FFmpeg's messages "
                        "inside it); without it they stay off the terminal")
    r.add_argument("--demo", action="store_true",
                   help="run on a generated sample video with a small RANDOM-weights checkpoint (./demo_data)")
    return p


def quiet_libraries(verbose: bool) -> None:
    """PyNvVideoCodec's own logger (and FFmpeg's, inside it) take their level from LOGGER_LEVEL,
    read when it loads: FATAL keeps lines such as '[WARN ][12:00:00] Container format is
    matroska,webm. , Seek accuracy may be impacted.' off the terminal (what they warn of
    reaches the manifest's decoder_note: decode.gpu.nvdec_cannot). The workers and their
    decoder processes inherit it; a LOGGER_LEVEL the user set is kept."""
    if not verbose:
        os.environ.setdefault("LOGGER_LEVEL", "FATAL")


def resolve(args: argparse.Namespace, launcher=None):
    """Checks everything that can be checked before work; returns (RunConfig, videos, world_size, backbone),
    videos as names relative to --data_path (extractor/datasets.py). `launcher`: rank, world size and
    rendezvous when torchrun or srun started this process."""
    if args.demo:
        from extractor.demo import prepare_demo

        args.data_path, args.ckpt_path, args.save_path = prepare_demo(Path("demo_data"))
        args.model_name, args.data_set = "auto", args.data_set or "charades"
        print("DEMO: a generated video and a RANDOM-weights checkpoint; the features mean nothing.")
    for flag in ("data_path", "save_path", "ckpt_path"):
        if getattr(args, flag) is None:
            raise UsageError(f"--{flag} is required")
    if not args.data_path.is_dir():
        raise UsageError(f"--data_path {args.data_path} is not an existing folder")
    if args.data_set is None and (args.clip_len is None or args.stride is None):
        raise UsageError("give --data_set (a preset) or both --clip_len and --stride")
    clip_len, stride = PRESETS.get(args.data_set, (None, None))
    clip_len, stride = args.clip_len or clip_len, args.stride or stride
    import torch

    from extractor.backbones import open_backbone
    from extractor.checkpoints import CheckpointError
    from extractor.config import RunConfig
    from extractor.video import VIDEO_EXTENSIONS

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    if device == "cuda" and gpus == 0:
        raise UsageError("--device cuda, but no CUDA GPU is visible")
    if launcher is not None:
        world_size = launcher["world_size"]
        if args.world_size not in (None, world_size):
            raise UsageError(f"--world_size {args.world_size}, but {launcher['source']} started {world_size} processes "
                             "(under torchrun or srun, one process is one worker: leave --world_size out)")
        if not launcher["master_addr"] or not launcher["master_port"]:
            raise UsageError(f"{launcher['source']} start without MASTER_ADDR/MASTER_PORT: export MASTER_ADDR (the "
                             "first node's host name) and MASTER_PORT, see README 'Many GPUs and nodes'")
    else:
        world_size = args.world_size or (gpus if device == "cuda" else 1)
        if device == "cuda" and world_size > gpus:
            raise UsageError(f"--world_size {world_size} but only {gpus} GPU(s) are visible")
    dtype = args.dtype if args.dtype != "auto" else ("bf16" if device == "cuda" else "fp32")
    if dtype == "tf32" and device != "cuda":
        raise UsageError("--dtype tf32 needs --device cuda (TF32 is a GPU matrix mode)")
    compile_model = args.compile if args.compile is not None else device == "cuda"
    if args.decoder == "nvdec" or args.nvdec_sessions:
        from extractor.decode.gpu import nvdec_available

        if device != "cuda":
            raise UsageError("--decoder nvdec needs --device cuda")
        why = nvdec_available()
        if why:
            raise UsageError(f"--decoder nvdec needs PyNvVideoCodec and the driver's NVDEC library ({why})")

    videos = choose_videos(args)
    if not videos:
        if args.video_list is not None:
            raise UsageError(f"--video_list {args.video_list} names no videos")
        raise UsageError(f"no video files in {args.data_path}{' or its subfolders' if args.recursive else ''} "
                         f"(extensions: {' '.join(sorted(VIDEO_EXTENSIONS))})")
    check_distinct_outputs(videos, args)
    if args.anno_file is not None:
        from extractor.outputs import annotated_videos

        try:
            annotated_videos(args.anno_file)
        except (OSError, ValueError) as e:
            raise UsageError(f"--anno_file {args.anno_file}: {e}") from None
    cfg = RunConfig(
        save_path=args.save_path, ckpt_path=args.ckpt_path, model_type=args.model_type, model_name=args.model_name,
        model_key=args.model_key, device=device, clip_len=clip_len, stride=stride, batch_clips=args.batch_clips,
        dtype=dtype, compile=compile_model, decoder=args.decoder, cpu_decoders=args.cpu_decoders or 0,
        nvdec_sessions=args.nvdec_sessions or 0, nvdec_sms=args.nvdec_sms, num_threads=args.num_threads or 0,
        decode_buffer_bytes=args.decode_buffer_mb << 20, segment_frames=args.segment_frames,
        normalize=args.normalize, pooling=args.pooling,
        temporal_positions=args.temporal_positions, prefix=args.prefix, suffix=args.suffix, ext=args.ext,
        lost_after_s=args.lost_after_s, decode_timeout_s=args.decode_timeout_s, data_path=args.data_path,
        verbose=args.verbose)
    try:
        backbone = open_backbone(args.model_type, args.ckpt_path, cfg.backbone_options())
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    cfg.preprocessing = backbone.preprocessing  # (a worker compiles its frame conversion before it opens the checkpoint)
    try:
        args.save_path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --save_path {args.save_path}: {e.strerror}") from None
    return cfg, videos, world_size, backbone


def decoding_plan(cfg, group) -> str:
    """What each worker of this node will decode with, said before any starts (NVML gives
    the GPU's name without starting CUDA here)."""
    import torch

    from extractor.decode.gpu import gpu_name_from_nvml, nvdec_available
    from extractor.launch import cores_available
    from extractor.decode.plan import plan_decoding

    device = torch.device(cfg.device, 0) if cfg.device == "cuda" else torch.device("cpu")
    gpu_name = gpu_name_from_nvml() if cfg.device == "cuda" else ""
    plan = plan_decoding(cfg.decode_options(), device, max(1, cores_available() // group.node_workers), gpu_name or "unknown GPU")
    text = f"per worker {plan.describe()}"
    if cfg.device == "cuda" and cfg.decoder == "auto" and not plan.nvdec_sessions:
        text += f" (no NVDEC: {nvdec_available()})"
    elif plan.nvdec_sessions and not cfg.nvdec_sessions:
        text += f" ({gpu_name or 'unknown GPU'})"
    return text


def choose_videos(args) -> list[str]:
    """The names of the videos the run covers: --video_list's, or those found in --data_path."""
    from extractor.datasets import find_videos, read_video_list

    if args.video_list is not None:
        try:
            return read_video_list(args.video_list, args.data_path)
        except OSError as e:
            raise UsageError(f"--video_list {args.video_list}: cannot read it ({e.strerror or e})") from None
        except UnicodeDecodeError:
            raise UsageError(f"--video_list {args.video_list}: not a UTF-8 text file") from None
    try:
        return find_videos(args.data_path, args.recursive)
    except OSError as e:
        raise UsageError(f"cannot read {e.filename or args.data_path}: {e.strerror or e}") from None


def check_distinct_outputs(videos: list[str], args) -> None:
    """Two videos whose features would go to the same file stop the run before any work."""
    from extractor.datasets import feature_relpath, output_collisions

    clashes = output_collisions(videos, lambda name: feature_relpath(name, args.prefix, args.suffix, args.ext))
    if clashes:
        first, second, out = clashes[0]
        more = f" (and {len(clashes) - 1} more such pairs)" if len(clashes) > 1 else ""
        raise UsageError(f"{first} and {second} would both write {args.save_path / out}{more}: rename one of them")


def run_record(cfg, backbone) -> dict:
    """The settings every manifest line carries."""
    from extractor.checkpoints import file_digest

    return {
        "clip_len": cfg.clip_len, "stride": cfg.stride,
        "clip_start_frame": "stride * i (i = 0 .. num_clips - 1); a video shorter than clip_len: one clip at 0, "
                            "padded with its last frame",
        "clip_start_seconds": "clip_start_frame / fps",
        "dtype": "float32", "model_type": backbone.model_type, "backbone": backbone.description,
        "pooling": backbone.pooling,
        "checkpoint": str(cfg.ckpt_path.resolve()), "checkpoint_sha256_16": file_digest(cfg.ckpt_path),
        "preprocessing": backbone.preprocessing.describe(), "compute_dtype": cfg.dtype, "decoder": cfg.decoder,
    }


def video_record(ev: dict, cfg) -> dict:
    from extractor.datasets import feature_relpath

    if ev["type"] == "failed":
        return {"video": ev["video"], "status": "failed", "reason": ev["reason"]}
    return {"video": ev["video"], "status": "done", "path": ev["path"],
            "feature_file": str(feature_relpath(ev["video"], cfg.prefix, cfg.suffix, cfg.ext)),
            "frames": ev["frames"], "fps": ev["fps"], "num_clips": ev["clips"], "shape": [ev["clips"], ev["width"]],
            "video_decoder": ev["decoder"], **({"decoder_note": ev["decoder_note"]} if ev.get("decoder_note") else {}),
            "rotation_applied": ev["rotation"], "seconds": round(ev["wall_s"], 3)}


def main(argv=None) -> int:
    # torch's C++ warnings come with their C++ stack: a store connection that closes (process 0
    # stopped) printed one per call. Its errors still print; the message that matters is ours.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    args = build_parser().parse_args(argv)
    quiet_libraries(args.verbose)  # (before the workers' server starts: it and they inherit the environment)
    if args.demo or args.data_path is not None:  # (without, a usage error follows)
        # The workers' server imports what they need beside this process's imports and checks.
        start_worker_server(args.compile if args.compile is not None else args.device != "cpu" and gpu_present(),
                            args.model_type)
    from extractor.launch import dump_stacks_on_sigusr1, launcher_environment

    dump_stacks_on_sigusr1()
    launcher = launcher_environment()
    # SIGTERM (torchrun, Slurm, kill) ends the run like Ctrl-C: workers are stopped, finished files kept
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        cfg, videos, world_size, backbone = resolve(args, launcher)
    except UsageError as e:
        stop_worker_server()
        print(f"error: {e}", file=sys.stderr)
        return 2
    from torch.distributed import DistError

    from extractor.decode.common import first_line
    from extractor.launch import GroupError, RunSummary, join_launcher_group, local_group, run_group
    from extractor.progress import RUN_LOG, RunLog

    where = "in this process"
    if launcher is None:
        group = local_group(world_size)
    else:
        where = f"at {launcher['master_addr']}:{launcher['master_port']}"
        try:
            group = join_launcher_group(launcher, say=lambda text: print(text, file=sys.stderr, flush=True))
        except GroupError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except Exception as e:  # a timeout or refused connection: one line, not a traceback
            print(f"error: rendezvous {where} failed: {first_line(e)}", file=sys.stderr)
            return 2
    log = RunLog(cfg.save_path / RUN_LOG if group.coordinator else None)  # process 0 keeps the run's log
    try:
        if group.coordinator:
            command = shlex.join(["feat_extraction.py", *(sys.argv[1:] if argv is None else map(str, argv))])
            log.keep(f"run started on {socket.gethostname()} (pid {os.getpid()}): {command}")
            held, backbone = [backbone], None  # (coordinate lets go of it before the run: see there)
            return coordinate(args, cfg, videos, group, held, log)
        del backbone
        run_group(group, cfg, args.data_path, None, RunSummary())
        return 0
    except KeyboardInterrupt:
        log.say("interrupted: finished feature files are kept; run the same command again to resume", err=True)
        return 130
    except (GroupError, DistError) as e:  # process 0, which hosts the group's store, stopped or gave up
        log.say(f"error: this process lost its group (its store {where}: {first_line(e)}) and stops; finished "
                "feature files are kept; run the same command again to resume", err=True)
        return 3
    finally:
        log.close()


def coordinate(args, cfg, videos, group, held: list, log) -> int:
    """Process 0: decides what to do, runs its share, keeps the records, prints the summary.
    `held`: the opened backbone, alone in a list that this function empties, so that no frame
    keeps it (a LLaVA-ViT state dict, a Hugging Face model) in memory through the run: the
    workers open their own."""
    backbone = held.pop()
    from extractor.datasets import file_sizes
    from extractor.launch import RunSummary, run_group
    from extractor.outputs import (Manifest, annotated_videos, check_existing, remove_partial_files, write_failed,
                                   write_missing)

    if backbone.note:
        log.say(f"note: {backbone.note}", err=True)
    removed = remove_partial_files(cfg.save_path)
    if removed:
        log.say(f"removed {removed} partial file(s) left by an interrupted run", err=True)
    summary = RunSummary()
    todo = []
    for video in videos:
        out = cfg.output_path(args.data_path / video)
        if out.exists() and not args.overwrite:
            problem = check_existing(out, backbone.width)
            if problem is None:
                summary.skipped += 1
                continue
            log.say(f"warning: {out.relative_to(cfg.save_path)} {problem}: recomputing", err=True)
        todo.append(video)
    sizes = file_sizes(args.data_path, todo)
    not_found = [video for video in todo if sizes[video] is None]
    todo = sorted((video for video in todo if sizes[video] is not None), key=lambda v: (-sizes[v], v))  # longest first
    processes = f" in {group.processes} processes" if group.processes > 1 else ""
    log.say(f"{len(videos)} videos, {len(todo)} to do, {summary.skipped} already done"
            f"{f', {len(not_found)} not found' if not_found else ''} | device {cfg.device} "
            f"x{group.world_size}{processes} | {cfg.dtype}{' compiled' if cfg.compile else ''} | clips {cfg.clip_len} "
            f"frames, stride {cfg.stride} | batch {cfg.batch_clips} | decoder {cfg.decoder}: "
            f"{decoding_plan(cfg, group)} | {backbone.description} | {backbone.preprocessing.describe()}")
    # run_record hashes the checkpoint: only when there is something to record
    manifest = Manifest(cfg.save_path, run_record(cfg, backbone)) if todo or not_found else None
    width = backbone.width
    del backbone
    for video in not_found:
        summary.failed[video] = "not found"
        log.say(f"FAILED {video}: not found", err=True)
        manifest.add(video_record({"type": "failed", "video": video, "reason": "not found"}, cfg))
    try:
        run_group(group, cfg, args.data_path, todo, summary, on_video=lambda ev: manifest.add(video_record(ev, cfg)),
                  sizes={video: sizes[video] for video in todo}, log=log, log_every_s=args.log_every_s)
    except KeyboardInterrupt:
        left = len(todo) + len(not_found) - summary.done - len(summary.failed)
        log.say(f"interrupted: {summary.done} done, {len(summary.failed)} failed, {left} of "
                f"{len(todo) + len(not_found)} videos left | {records(cfg, manifest, {}, None)} | finished feature "
                f"files are kept; run the same command again to resume", err=True)
        return 130
    keep_written_before_loss(cfg, args.data_path, summary, manifest, width, log)
    write_failed(cfg.save_path, summary.failed)
    missing = None
    if args.anno_file is not None:
        missing = write_missing(cfg.save_path, annotated_videos(args.anno_file), cfg.prefix, cfg.suffix, cfg.ext)
    busy_s = summary.work_s()
    shutdown_s = max(0.0, summary.wall_s - summary.startup_s - busy_s)
    rate = summary.clips / busy_s if busy_s > 0 else 0.0
    idle_s, idle_frac = summary.end_idle()
    balance = f" | first worker out of work waited {idle_s:.1f}s ({idle_frac:.1%} of the run)" \
        if len(summary.worker_end_s) > 1 else ""
    resume = f" | {len(summary.failed)} videos have no features: run the same command again to resume (it tries " \
             "them again; finished videos are skipped)" if summary.failed else ""
    log.say(f"summary: {summary.done} done, {summary.skipped} skipped, {len(summary.failed)} failed | "
            f"{summary.clips} clips in {busy_s:.1f}s after {summary.startup_s:.1f}s start-up = {rate:.1f} clips/s "
            f"(then {shutdown_s:.1f}s shutdown) | "
            f"time split (summed over videos, "
            f"overlapping): decode {summary.decode_s:.1f}s, model {summary.model_s:.1f}s, save {summary.save_s:.1f}s"
            f" | peak memory per worker: {summary.peak_ram_gib:.2f} GiB RAM (decoder processes and buffers included), "
            f"{summary.peak_gpu_gib:.2f} GiB GPU{balance} | {records(cfg, manifest, summary.failed, missing)}{resume}")
    if summary.failed:
        log.say(f"{len(summary.failed)} videos failed: see {cfg.save_path / 'failed_videos.txt'}", err=True)
        return 1
    return 0


def keep_written_before_loss(cfg, data_path: Path, summary, manifest, width: int, log) -> None:
    """A worker lost (killed, its node gone) after writing a video's features and before
    reporting it: the file is complete (writes are atomic), so the video counts as done,
    not failed, and the manifest says so."""
    from extractor.outputs import check_existing, load_features
    from extractor.progress import LOST_WHILE_HOLDING

    for name, reason in list(summary.failed.items()):
        out = cfg.output_path(data_path / name)
        if not reason.endswith(LOST_WHILE_HOLDING) or not out.exists() or check_existing(out, width) is not None:
            continue
        del summary.failed[name]
        summary.done += 1
        clips = int(load_features(out).shape[0])
        manifest.add({"video": name, "status": "done", "feature_file": str(out.relative_to(cfg.save_path)),
                      "num_clips": clips, "shape": [clips, width], "note": "written before its worker was lost"})
        log.say(f"{name}: its features were written before its worker was lost: kept", err=True)


def records(cfg, manifest, failed: dict, missing) -> str:
    """Where the run's records are, with their counts."""
    from extractor.outputs import FAILED_LIST, MANIFEST, MISSING_LIST

    found = []
    if (cfg.save_path / MANIFEST).exists():
        found.append(f"{cfg.save_path / MANIFEST} ({manifest.written if manifest else 0} entries added)")
    if failed:
        found.append(f"{cfg.save_path / FAILED_LIST} ({len(failed)} videos)")
    if missing is not None:
        found.append(f"{cfg.save_path / MISSING_LIST} ({len(missing)} annotated videos without features)")
    return f"records: {', '.join(found) or 'none'}"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM before the run began (the run handles its own)
        print("interrupted: nothing was done", file=sys.stderr)
        sys.exit(130)
