"""Model-only levers of LLaVA-ViT on one GPU (bench/run.py --stages levers): clips/s and
TFLOP/s for each setting.

Random weights and random clips (never zeros), CUDA-event timing of the median of
repeated batches after warm-up. Each setting is one line of the table it prints."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from extractor.model import VARIANTS, LlavaViT, flops_per_clip  # noqa: E402

DT = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sdpa_backend(name: str):
    if name == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel({"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                        "efficient": SDPBackend.EFFICIENT_ATTENTION}[name])


def measure(model: LlavaViT, *, batch: int, weights: str, autocast: str = "", tf32: bool = False,
            compile_mode: str = "", attention: str = "default", clip_len: int = 16, size: int = 224,
            iters: int = 10) -> dict:
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    m = model.to(DT[weights])
    grid = size // m.cfg.patch_size
    cos, sin = m.rope_tables(torch.arange(clip_len, device=dev), grid, grid)
    fn = m.encode
    if compile_mode:
        torch._dynamo.reset()
        fn = torch.compile(m.encode, mode=None if compile_mode == "default" else compile_mode)
    inputs = [torch.rand(batch, 3, clip_len, size, size, device=dev, dtype=DT[weights]) for _ in range(2)]
    amp = torch.autocast("cuda", dtype=DT[autocast]) if autocast else contextlib.nullcontext()
    torch.cuda.reset_peak_memory_stats()
    times = []
    t_start = time.perf_counter()
    with torch.inference_mode(), amp, sdpa_backend(attention):
        for i in range(3 + iters):
            if i == 1:
                warm_s = time.perf_counter() - t_start
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn(inputs[i % 2], cos, sin)["head_output"].float()
            b.record()
            torch.cuda.synchronize()
            if i >= 3:
                times.append(a.elapsed_time(b) / 1e3)
    times.sort()
    t = times[len(times) // 2]
    clips_s = batch / t
    tokens = clip_len * grid * grid
    return {"batch": batch, "weights": weights, "autocast": autocast, "tf32": tf32, "compile": compile_mode or "-",
            "attention": attention, "clips_per_s": clips_s, "tflops": clips_s * flops_per_clip(m.cfg, tokens) / 1e12,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "first_call_s": warm_s,
            "spread": (times[-1] - times[0]) / t}


SETTINGS = {
    "original_fp32_b20": dict(batch=20, weights="fp32"),
    "planned_tf32_fp16amp_b64": dict(batch=64, weights="fp32", autocast="fp16", tf32=True),
    "bf16_b64": dict(batch=64, weights="bf16"),
    "bf16_cudnn_b64": dict(batch=64, weights="bf16", attention="cudnn"),
    "fp16_cudnn_b64": dict(batch=64, weights="fp16", attention="cudnn"),
    "bf16_compiled_b64": dict(batch=64, weights="bf16", compile_mode="default"),
    "bf16_compiled_cudnn_b64": dict(batch=64, weights="bf16", compile_mode="default", attention="cudnn"),
    "bf16_compiled_cudnn_b32": dict(batch=32, weights="bf16", compile_mode="default", attention="cudnn"),
    "bf16_compiled_cudnn_b128": dict(batch=128, weights="bf16", compile_mode="default", attention="cudnn"),
    "bf16_maxautotune_cudnn_b64": dict(batch=64, weights="bf16", compile_mode="max-autotune-no-cudagraphs",
                                       attention="cudnn"),
    "bf16_reduceoverhead_cudnn_b64": dict(batch=64, weights="bf16", compile_mode="reduce-overhead",
                                          attention="cudnn"),
}


def attention_backends(batch=64, heads=12, tokens=3136, head_dim=64):
    """TFLOP/s of SDPA alone at the model's shape, per backend (bf16)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (torch.randn(batch, heads, tokens, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    flops = 4 * batch * heads * tokens * tokens * head_dim
    for name, backend in [("default", None), ("flash", SDPBackend.FLASH_ATTENTION),
                          ("cudnn", SDPBackend.CUDNN_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:
        ctx = sdpa_kernel(backend) if backend is not None else contextlib.nullcontext()
        try:
            with ctx:
                for _ in range(3):
                    torch.nn.functional.scaled_dot_product_attention(q, k, v)
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                for _ in range(10):
                    torch.nn.functional.scaled_dot_product_attention(q, k, v)
                b.record()
                torch.cuda.synchronize()
            print(f"sdpa {name:10s} {flops * 10 / (a.elapsed_time(b) / 1e3) / 1e12:6.1f} TFLOP/s")
        except Exception as e:
            print(f"sdpa {name:10s} failed: {str(e).splitlines()[0][:120]}")


DEFAULT_LEVERS = "original_fp32_b20,planned_tf32_fp16amp_b64,bf16_b64,bf16_compiled_b64"


def levers(variant: str = "llava_vit_base_ln", settings: str = DEFAULT_LEVERS, attention: bool = False) -> list:
    """bench/run.py --stages levers: one table line per setting of SETTINGS."""
    torch.manual_seed(0)
    if attention:
        attention_backends()
    model = LlavaViT(VARIANTS[variant]).cuda().eval().requires_grad_(False)
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} {variant}")
    print(f"{'setting':34s} {'clips/s':>8s} {'TFLOP/s':>8s} {'peak GiB':>8s} {'1st call s':>10s} {'spread':>6s}")
    results = []
    for name in settings.split(","):
        try:
            r = measure(model, **SETTINGS[name])
        except Exception as e:  # report and go on: one failing setting must not hide the others
            print(f"{name:34s} failed: {type(e).__name__}: {str(e).splitlines()[0][:150]}")
            continue
        r["setting"] = name
        print(f"{name:34s} {r['clips_per_s']:8.1f} {r['tflops']:8.1f} {r['peak_gib']:8.1f} {r['first_call_s']:10.1f} "
              f"{r['spread']:6.1%}", flush=True)
        results.append(r)
    return results
