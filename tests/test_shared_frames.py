"""An image backbone on overlapping clips runs each frame once (engine.Engine._shared_frames):
the same features as running every clip's frames, from fewer frames, and with --compile one
graph for any number of frames."""

import pytest
import torch

from extractor.backbones import BackboneOptions, open_backbone
from extractor.config import RunConfig
from extractor.engine import Engine
from extractor.pipeline import set_stance
from extractor.video import RECOMPILE

transformers = pytest.importorskip("transformers")
CLIP_LEN, STRIDE = 16, 4


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("siglip")
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    torch.manual_seed(0)
    transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**small, image_size=32, patch_size=16)) \
        .save_pretrained(folder)
    return folder


def engine_for(folder, compile: bool = False, batch: int = 8) -> Engine:
    cfg = RunConfig(save_path=folder, ckpt_path=folder, model_type="hf", clip_len=CLIP_LEN, stride=STRIDE,
                    batch_clips=batch, compile=compile, normalize="none")
    backbone = open_backbone("hf", folder, BackboneOptions(normalize="none", clip_len=CLIP_LEN))
    return Engine(cfg, torch.device("cpu"), lambda ev: None, backbone)


def batches():
    """Clips as the pipeline hands them over: windows into a video's frames, a short video's
    clip padded by repeating its last frame (a stride-0 view), and clips of a second video."""
    torch.manual_seed(1)
    first, second, short = torch.rand(40, 3, 32, 32), torch.rand(24, 3, 32, 32), torch.rand(6, 3, 32, 32)
    windows = [first[i:i + CLIP_LEN] for i in range(0, 40 - CLIP_LEN + 1, STRIDE)]  # 7 clips, frames 0-39
    pad_clip = torch.cat([short, short[-1:].expand(CLIP_LEN - 6, 3, 32, 32)])  # as ClipAssembler._gather makes it
    other = [second[i:i + CLIP_LEN] for i in range(0, 24 - CLIP_LEN + 1, STRIDE)]  # 3 clips
    return [windows[:5], windows[5:] + [pad_clip] + other, [second[0:CLIP_LEN]]]


def test_each_frame_runs_once_and_the_features_are_the_clips(siglip):
    engine = engine_for(siglip)
    assert engine.frames_once is not None
    features = [engine.result(engine.submit(clips))[0] for clips in batches()]
    # every clip's frames through the model, as without sharing
    direct = [engine.encode(torch.stack(clips)) for clips in batches()]
    for got, want in zip(features, direct):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # batch 1: frames 0-31 of the first video (5 clips); batch 2: frames 20-39, the padded
    # clip (its own 16 rows, a copy), the second video's 24 frames; batch 3: 16 frames
    assert engine.frames_run == 32 + (20 + 16 + 24) + 16


def test_clips_that_do_not_overlap_run_as_before(siglip, tmp_path):
    cfg = RunConfig(save_path=tmp_path, ckpt_path=siglip, model_type="hf", clip_len=CLIP_LEN, stride=CLIP_LEN,
                    batch_clips=4)
    backbone = open_backbone("hf", siglip, BackboneOptions(clip_len=CLIP_LEN))
    assert Engine(cfg, torch.device("cpu"), lambda ev: None, backbone).frames_once is None


def test_compiled_once_for_any_number_of_frames(siglip):
    """Batches of 32, 60 and 16 distinct frames after a warm-up on 44: no compilation after it (the
    stance a running worker sets turns one into an error, which the engine counts)."""
    engine = engine_for(siglip, compile=True)
    assert engine.frames_once is not None  # (its blocks found and compiled)
    set_stance(RECOMPILE)
    try:
        for clips in batches():
            engine.result(engine.submit(clips))
    finally:
        set_stance("default")
    assert engine.eager_batches == 0, engine.fallbacks
