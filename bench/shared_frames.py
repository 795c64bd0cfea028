"""An image backbone on overlapping clips, its frames run once (Engine's shared frames) against
every clip's 16 frames: clips/s of one batch of 64 stride-4 clips of one video, repeated.

    python bench/shared_frames.py [--seconds 20] [--width 128] [--layers 2]

A random SigLIP vision tower (224 x 224, patch 16) of the given width and depth, on the GPU
in bf16 when there is one, else on the CPU in fp32."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from extractor.backbones import BackboneOptions, open_backbone  # noqa: E402
from extractor.config import RunConfig  # noqa: E402
from extractor.engine import Engine  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    a = ap.parse_args()
    import transformers

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    folder = Path(tempfile.mkdtemp(prefix="shared_frames_"))
    torch.manual_seed(0)
    config = transformers.SiglipVisionConfig(hidden_size=a.width, intermediate_size=4 * a.width,
                                             num_hidden_layers=a.layers, num_attention_heads=max(1, a.width // 64),
                                             image_size=224, patch_size=16)
    transformers.SiglipVisionModel(config).save_pretrained(folder)
    for shared in (False, True):
        cfg = RunConfig(save_path=folder, ckpt_path=folder, model_type="hf", clip_len=16, stride=4, batch_clips=64,
                        normalize="none", device=device.type, dtype="bf16" if cuda else "fp32")
        engine = Engine(cfg, device, lambda ev: None, open_backbone("hf", folder, BackboneOptions(normalize="none")))
        clips = engine.random_clips()  # 64 windows, 4 frames apart, over 268 frames
        if not shared:
            engine.frames_once = None
        engine.result(engine.submit(clips))
        t0, done = time.perf_counter(), 0
        while time.perf_counter() - t0 < a.seconds:
            engine.result(engine.submit(clips))
            done += len(clips)
        print(f"frames run once {shared}: {done / (time.perf_counter() - t0):.1f} clips/s "
              f"({device.type}, SigLIP width {a.width}, {a.layers} layers, 64 clips of 16 frames, stride 4)", flush=True)


if __name__ == "__main__":
    main()
