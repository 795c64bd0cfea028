"""Hugging Face backbones of published shapes, with random weights (nothing is downloaded).

  python bench/hf_models.py save siglip base FOLDER [--dtype bf16]   # a folder for --model_type hf
  python bench/hf_models.py time --families clip,videomae --sizes base [--quick]
  python bench/run.py WORK --stages hf_model --families siglip,videomae --sizes base,large

`time`: model-only clips/s of the pipeline's own clip function (extractor/backbones/hf.py:
open_backbone('hf') on a saved folder, build in bf16, the pipeline's compile_blocks) on random
clips of 16 frames already on the device, CUDA-event timing (median of the timed batches), and
approximate TFLOP/s (matrix products of the transformer layers only). Per-frame families run
clips x 16 images per call.

Shapes are the published configs' (hard-coded below): CLIP ViT-B/16 and ViT-L/14 at 224;
SigLIP base-patch16-224 and large-patch16-256; DINOv2 base and large (patch 14, run at 224);
DINOv3 ViT-B/16 and ViT-L/16 (4 register tokens, RoPE, 224); AIMv2 large and huge patch14-224
(no base published; vision-only checkpoints, no attention-pooling head: mean pooling);
VideoMAE base and large (16 frames, tubelet 2, 224); V-JEPA 2 ViT-L and ViT-H (published
fpc64-256: 64 frames at 256; saved as made for 64 frames, run on 16-frame clips to match the
clip length, which its rotary positions allow)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from extractor.backbones.base import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

FRAMES = 16
B16 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
L = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
TEXT_IDS = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1)

# family -> size -> (config class, model class, config kwargs); "tiny" is the CPU smoke test's
SHAPES = {
    "clip": {
        "base": ("CLIPConfig", "CLIPModel", dict(
            vision_config=dict(B16, patch_size=16, image_size=224),
            text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
            projection_dim=512)),
        "large": ("CLIPConfig", "CLIPModel", dict(
            vision_config=dict(L, patch_size=14, image_size=224),
            text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
            projection_dim=768)),
        "tiny": ("CLIPConfig", "CLIPModel", dict(vision_config=dict(TINY, patch_size=16, image_size=32),
                                                 text_config=dict(TINY, vocab_size=99, **TEXT_IDS))),
    },
    "siglip": {
        "base": ("SiglipConfig", "SiglipModel", dict(vision_config=dict(B16, patch_size=16, image_size=224),
                                                     text_config=dict(B16))),
        "large": ("SiglipConfig", "SiglipModel", dict(vision_config=dict(L, patch_size=16, image_size=256),
                                                      text_config=dict(L))),
        "tiny": ("SiglipConfig", "SiglipModel", dict(vision_config=dict(TINY, patch_size=16, image_size=32),
                                                     text_config=dict(TINY, vocab_size=99, **TEXT_IDS))),
    },
    "dinov2": {
        "base": ("Dinov2Config", "Dinov2Model", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                                     patch_size=14, image_size=518)),
        "large": ("Dinov2Config", "Dinov2Model", dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                                      patch_size=14, image_size=518)),
        "tiny": ("Dinov2Config", "Dinov2Model", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                     mlp_ratio=2, patch_size=16, image_size=32)),
    },
    "dinov3": {
        "base": ("DINOv3ViTConfig", "DINOv3ViTModel", dict(B16, patch_size=16, image_size=224, num_register_tokens=4,
                                                           layerscale_value=1e-5)),
        "large": ("DINOv3ViTConfig", "DINOv3ViTModel", dict(L, patch_size=16, image_size=224, num_register_tokens=4,
                                                            layerscale_value=1e-5)),
        "tiny": ("DINOv3ViTConfig", "DINOv3ViTModel", dict(TINY, patch_size=16, image_size=32, num_register_tokens=2)),
    },
    "aimv2": {
        "large": ("Aimv2VisionConfig", "Aimv2VisionModel", dict(
            hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=8, patch_size=14,
            image_size=224, use_head=False)),
        "huge": ("Aimv2VisionConfig", "Aimv2VisionModel", dict(
            hidden_size=1536, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=12, patch_size=14,
            image_size=224, use_head=False)),
        "tiny": ("Aimv2Config", "Aimv2Model", dict(vision_config=dict(TINY, patch_size=16, image_size=32),
                                                   text_config=dict(TINY, vocab_size=99, **TEXT_IDS))),
    },
    "videomae": {
        "base": ("VideoMAEConfig", "VideoMAEModel", dict(B16, patch_size=16, image_size=224, num_frames=16,
                                                         tubelet_size=2)),
        "large": ("VideoMAEConfig", "VideoMAEModel", dict(L, patch_size=16, image_size=224, num_frames=16,
                                                          tubelet_size=2)),
        "tiny": ("VideoMAEConfig", "VideoMAEModel", dict(TINY, patch_size=16, image_size=32, num_frames=FRAMES,
                                                         tubelet_size=2)),
    },
    "vjepa2": {
        "large": ("VJEPA2Config", "VJEPA2Model", dict(
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4.0, patch_size=16,
            tubelet_size=2, crop_size=256, frames_per_clip=64, pred_hidden_size=384, pred_num_hidden_layers=12,
            pred_num_attention_heads=12, pred_num_mask_tokens=10)),
        "huge": ("VJEPA2Config", "VJEPA2Model", dict(
            hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, mlp_ratio=4.0, patch_size=16,
            tubelet_size=2, crop_size=256, frames_per_clip=64, pred_hidden_size=384, pred_num_hidden_layers=12,
            pred_num_attention_heads=12, pred_num_mask_tokens=10)),
        "tiny": ("VJEPA2Config", "VJEPA2Model", dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2.0, patch_size=16, tubelet_size=2,
            crop_size=32, frames_per_clip=FRAMES, pred_hidden_size=32, pred_num_hidden_layers=1,
            pred_num_attention_heads=2, pred_num_mask_tokens=2)),
    },
}
SIZE_ALIASES = {"base": ("base", "large"), "large": ("large", "huge")}  # AIMv2, V-JEPA 2: no base published

IMAGENET = dict(image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
HALF = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
CLIP_NORM = dict(image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


def processor_config(family: str, size: int) -> tuple[str, dict]:
    """(file name, content) as the published folders have them, at the model's size."""
    square = {"height": size, "width": size}
    if family == "clip":
        return "preprocessor_config.json", dict(size={"shortest_edge": size}, crop_size=square, do_center_crop=True,
                                                resample=3, **CLIP_NORM)
    if family == "siglip":
        return "preprocessor_config.json", dict(size=square, resample=2, **HALF)
    if family in ("dinov2", "aimv2"):
        return "preprocessor_config.json", dict(size={"shortest_edge": size * 8 // 7}, crop_size=square,
                                                do_center_crop=True, resample=3, **(CLIP_NORM if family == "aimv2"
                                                                                    else IMAGENET))
    if family == "dinov3":
        return "preprocessor_config.json", dict(size=square, resample=2, **IMAGENET)
    if family == "videomae":
        return "preprocessor_config.json", dict(size={"shortest_edge": size}, crop_size=square, do_center_crop=True,
                                                resample=2, **IMAGENET)
    return "video_preprocessor_config.json", dict(size={"shortest_edge": size * 256 // 224}, crop_size=square,
                                                  do_center_crop=True, resample=2, **IMAGENET)


def resolve_size(family: str, size: str) -> str:
    if size in SHAPES[family]:
        return size
    for alias in SIZE_ALIASES.get(size, ()):
        if alias in SHAPES[family]:
            return alias
    raise SystemExit(f"{family} has no size {size!r} (has {', '.join(SHAPES[family])})")


def save(family: str, size: str, folder: Path, dtype: str = "bf16", seed: int = 0) -> Path:
    """A random-weight folder of `family` at a published `size`, with its processor config."""
    import transformers

    config_class, model_class, kwargs = SHAPES[family][resolve_size(family, size)]
    for name in (config_class, model_class):
        if not hasattr(transformers, name):
            raise SystemExit(f"transformers {transformers.__version__} has no {name} (needed for {family})")
    torch.manual_seed(seed)
    config = getattr(transformers, config_class)(**kwargs)
    model = getattr(transformers, model_class)(config).to({"bf16": torch.bfloat16, "fp32": torch.float32}[dtype])
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    vision = getattr(config, "vision_config", config)
    # DINOv2's config says 518 (its pre-training size; positions are interpolated); its published
    # processor crops 224, the size it runs at.
    at = 224 if family == "dinov2" and size != "tiny" else int(getattr(vision, "crop_size", None) or vision.image_size)
    name, content = processor_config(family, at)
    (folder / name).write_text(json.dumps(content, indent=1))
    return folder


def flops_per_clip(backbone) -> float:
    """Matrix products of the transformer layers (2 per multiply-add), per clip."""
    c = backbone.vision_config
    d, layers = c.hidden_size, c.num_hidden_layers
    mlp = getattr(c, "intermediate_size", None) or int(d * getattr(c, "mlp_ratio", 4))
    h, w = backbone.preprocessing.size
    patches = (h // c.patch_size) * (w // c.patch_size)
    if backbone.family.per_clip:
        images, tokens = 1, FRAMES // c.tubelet_size * patches
    else:
        images, tokens = FRAMES, patches + backbone.prefix_tokens
    gated = 3 if "aimv2" in backbone.config_type else 2  # AIMv2's SwiGLU has three matrices
    per_layer = tokens * (8 * d * d + 2 * gated * d * mlp) + 4 * tokens * tokens * d
    return images * layers * per_layer


def time_family(family: str, size: str, device: torch.device, batch: int, iters: int = 10, quick: bool = False,
                compile_model: bool = True) -> dict:
    """clips/s of the pipeline's clip function for this family and size (bf16 on a GPU)."""
    from extractor.backbones import BackboneOptions, open_backbone
    from extractor.engine import compile_blocks

    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    with tempfile.TemporaryDirectory(prefix=f"hf_{family}_") as tmp:
        folder = save(family, "tiny" if quick else size, Path(tmp) / family, "bf16" if cuda else "fp32")
        backbone = open_backbone("hf", folder, BackboneOptions(clip_len=FRAMES))
        fn = backbone.build(device, dtype)
    blocks = compile_blocks(backbone.module) if compile_model else 0
    if compile_model and not blocks:
        fn = torch.compile(fn)
    h, w = backbone.preprocessing.size
    while True:
        try:
            inputs = [torch.rand(batch, FRAMES, 3, h, w, device=device).to(dtype) for _ in range(2)]
            times, t0 = [], time.perf_counter()
            with torch.inference_mode():
                for i in range(2 + iters):
                    if i == 1:
                        first_s = time.perf_counter() - t0
                    if cuda:
                        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        a.record()
                        out = fn(inputs[i % 2])
                        b.record()
                        torch.cuda.synchronize()
                        seconds = a.elapsed_time(b) / 1e3
                    else:
                        start = time.perf_counter()
                        out = fn(inputs[i % 2])
                        seconds = time.perf_counter() - start
                    if i >= 2:
                        times.append(seconds)
            break
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            batch //= 2
            torch.cuda.empty_cache()
    times.sort()
    t = times[len(times) // 2]
    r = {"family": family, "size": "tiny" if quick else resolve_size(family, size), "batch_clips": batch,
         "frames": FRAMES, "input": f"{h}x{w}", "dtype": str(dtype).replace("torch.", ""), "compiled_blocks": blocks,
         "width": backbone.width, "out_shape": list(out.shape), "pooling": backbone.pooling,
         "per": "clip" if backbone.family.per_clip else "frame", "clips_per_s": batch / t,
         "tflops": batch / t * flops_per_clip(backbone) / 1e12, "first_call_s": first_s,
         "spread": (times[-1] - times[0]) / t}
    if cuda:
        r["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    backbone.module = None
    return r


def run_hf_models(families: list, sizes: list, device: torch.device, quick: bool, batch: int = 64, say=print) -> dict:
    """bench/run.py --stages hf_model: each family at each size; a failure is recorded, not fatal."""
    results = {}
    for family in families:
        for size in (["tiny"] if quick else sizes):
            if not quick and size not in SHAPES[family] and not any(a in SHAPES[family] for a in SIZE_ALIASES.get(size, ())):
                continue
            key = f"{family}_{size if quick else resolve_size(family, size)}"
            if key in results:
                continue
            try:
                r = results[key] = time_family(family, size, device, 2 if quick else batch, iters=2 if quick else 10,
                                               quick=quick, compile_model=not quick)
                say(f"hf_model {key}: {r['clips_per_s']:.1f} clips/s ({r['per']} model, batch {r['batch_clips']}, "
                    f"{r['input']}, {r['dtype']}, {r['compiled_blocks']} blocks compiled) ~{r['tflops']:.1f} TFLOP/s")
            except Exception as e:  # (one family failing must not lose the others' figures)
                results[key] = {"error": " ".join(str(e).split())[:400]}
                say(f"hf_model {key}: FAILED {results[key]['error']}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("save", help="write a random-weight folder of a published shape")
    s.add_argument("family", choices=sorted(SHAPES))
    s.add_argument("size", help="base, large, huge (or tiny)")
    s.add_argument("folder", type=Path)
    s.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    t = sub.add_parser("time", help="model-only clips/s")
    t.add_argument("--families", default=",".join(SHAPES))
    t.add_argument("--sizes", default="base,large")
    t.add_argument("--batch", type=int, default=64, help="clips per call (halved on out-of-memory)")
    t.add_argument("--quick", action="store_true", help="tiny shapes on the CPU (a smoke test)")
    t.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.command == "save":
        print(save(a.family, a.size, a.folder, a.dtype))
        return
    device = torch.device("cuda", 0) if torch.cuda.is_available() and not a.quick else torch.device("cpu")
    families = [f for f in a.families.split(",") if f]
    unknown = set(families) - set(SHAPES)
    if unknown:
        raise SystemExit(f"unknown families {sorted(unknown)}; choose from {', '.join(SHAPES)}")
    results = run_hf_models(families, a.sizes.split(","), device, a.quick, a.batch)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
