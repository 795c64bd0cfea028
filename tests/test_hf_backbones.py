"""--model_type hf: every family through the CLI against the transformers model called directly.

Tiny random models (width 32, 2 layers, 32 x 32 inputs, patch 16) are saved with
save_pretrained; CLIP, SigLIP and AIMv2 as their whole two-tower model (vision + text), so
that the vision-tower path is what runs. MetaCLIP (v1) checkpoints are CLIP's architecture
and config (model_type "clip"): the CLIP test covers them. To keep the file fast, all the
CLI runs go through feat_extraction.main in one interpreter (hf_runs)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, cli_env, run_cli, write_video

transformers = pytest.importorskip("transformers")
CLIP_LEN, STRIDE, FRAMES = 16, 4, 24  # clips at 0, 4, 8
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
VISION = dict(SMALL, image_size=32, patch_size=16)
TEXT = dict(SMALL, vocab_size=99, max_position_embeddings=16, bos_token_id=0, eos_token_id=2, pad_token_id=1)
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def tiny_model(family: str):
    """A random model of the family, as its folder holds it."""
    t = transformers
    if family == "clip":
        m = t.CLIPModel(t.CLIPConfig(vision_config=VISION, text_config=TEXT))
        return m
    if family == "siglip":
        m = t.SiglipModel(t.SiglipConfig(vision_config=VISION, text_config=TEXT))
        return m
    if family == "aimv2":
        m = t.Aimv2Model(t.Aimv2Config(vision_config=VISION, text_config=TEXT))
        return m
    if family == "dinov2":
        m = t.Dinov2Model(t.Dinov2Config(**{k: v for k, v in VISION.items() if k != "intermediate_size"}, mlp_ratio=2))
        return m
    if family == "dinov3":
        m = t.DINOv3ViTModel(t.DINOv3ViTConfig(**VISION, num_register_tokens=2))
        return m
    if family == "videomae":
        m = t.VideoMAEModel(t.VideoMAEConfig(**VISION, num_frames=CLIP_LEN, tubelet_size=2))
        return m
    if family == "vjepa2":  # made for 32-frame clips, run on 16 (rotary positions)
        m = t.VJEPA2Model(t.VJEPA2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                                         crop_size=32, patch_size=16, frames_per_clip=32, tubelet_size=2,
                                         pred_hidden_size=32, pred_num_hidden_layers=1, pred_num_attention_heads=2,
                                         pred_num_mask_tokens=2))
        return m
    raise ValueError(family)


FAMILIES = ["clip", "siglip", "aimv2", "dinov2", "dinov3", "videomae", "vjepa2"]
PER_CLIP = {"videomae", "vjepa2"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_tiny")
    out = {}
    for i, family in enumerate(FAMILIES):
        torch.manual_seed(i)
        tiny_model(family).save_pretrained(root / family)
        out[family] = root / family
    # CLIP with a processor config as published ones are: bicubic, a crop, its mean/std
    (root / "clip" / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}, "do_center_crop": True,
         "resample": 3, "image_mean": MEAN, "image_std": STD, "do_normalize": True}))
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_videos")
    write_video(d / "clip.mp4", FRAMES, width=64, height=48)
    return d


RUNS = """
import json, sys
sys.path.insert(0, sys.argv[1])
import feat_extraction
if __name__ == "__main__":
    for argv in json.loads(sys.argv[2]):
        rc = feat_extraction.main(argv)
        for stream in (sys.stdout, sys.stderr):
            print(f"@@end {rc}", file=stream, flush=True)
"""


def hf_runs(runs: list, processes: int = 2) -> list:
    """Runs feat_extraction.main(argv) for each argv in `processes` interpreters side by side
    (the imports are most of a tiny run's time); returns [(exit status, stdout, stderr)] per run."""
    parts = [list(range(i, len(runs), processes)) for i in range(processes)]
    procs = [subprocess.Popen([sys.executable, "-c", RUNS, str(ROOT), json.dumps([[str(a) for a in runs[i]] for i in part])],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=ROOT)
             for part in parts]
    results = {}
    for part, proc in zip(parts, procs):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        outs, errs = out.split("@@end ")[:-1], err.split("@@end ")[:-1]
        assert len(outs) == len(errs) == len(part), err[-3000:]
        rcs = [int(o.split("\n", 1)[0]) for o in out.split("@@end ")[1:]]
        for k, (i, rc, o, e) in enumerate(zip(part, rcs, outs, errs)):
            strip = (lambda t: t.split("\n", 1)[1]) if k else (lambda t: t)  # the status line of the run before
            results[i] = (rc, strip(o), strip(e))
    return [results[i] for i in range(len(runs))]


def hf_args(videos, save, folder, *extra, normalize="none"):
    """The CLI's flags for a run on `folder`; normalize=None: the processor config's mean/std."""
    return ["--data_path", videos, "--save_path", save, "--clip_len", CLIP_LEN, "--stride", STRIDE,
            "--model_type", "hf", "--ckpt_path", folder, *(["--normalize", normalize] if normalize else []),
            "--device", "cpu", "--dtype", "fp32", "--batch_clips", "4", *extra]


def reference(video, folder, family, mean=None, std=None, mode="bilinear", pool=None):
    """Frames decoded with decord, /255, the whole frame resized to 32 x 32 (antialiased), the
    model's own forward: per frame and averaged over each clip, or on the whole clip."""
    import decord
    import torch.nn.functional as F

    model = type(tiny_model(family)).from_pretrained(str(folder)).eval()
    forward = tiny_model_forward(model, family, pool)
    vr = decord.VideoReader(str(video))
    frames = torch.from_numpy(vr.get_batch(list(range(len(vr)))).asnumpy()).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(frames, size=(32, 32), mode=mode, align_corners=False, antialias=True)
    if mean is not None:
        x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    starts = range(0, len(vr) - CLIP_LEN + 1, STRIDE)
    with torch.no_grad():
        if family in PER_CLIP:
            return forward(torch.stack([x[s:s + CLIP_LEN] for s in starts])).numpy()
        per_frame = forward(x)
    return torch.stack([per_frame[s:s + CLIP_LEN].mean(0) for s in starts]).numpy()


def tiny_model_forward(model, family, pool=None):
    """The reference forward of a loaded model; `pool` 'cls' or 'mean' (patch tokens) instead of the default."""
    if family in ("clip", "siglip", "aimv2"):
        run = lambda x: model.vision_model(pixel_values=x)  # noqa: E731
    elif family == "videomae":
        run = lambda x: model(pixel_values=x)  # noqa: E731
    elif family == "vjepa2":
        run = lambda x: model(pixel_values_videos=x, skip_predictor=True)  # noqa: E731
    else:
        run = lambda x: model(pixel_values=x)  # noqa: E731
    skip = {"clip": 1, "dinov2": 1, "dinov3": 3}.get(family, 0)
    if pool == "cls":
        return lambda x: run(x).last_hidden_state[:, 0]
    if pool == "mean" or family in PER_CLIP:
        return lambda x: run(x).last_hidden_state[:, skip:].mean(1)
    return lambda x: run(x).pooler_output


def cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_every_family_matches_its_model_called_directly(videos, folders, tmp_path):
    """Each family end to end (CLIP with its processor config, bicubic and its mean/std;
    the others without one: normalize none); --pooling cls and mean on CLIP; the manifest
    records the pooling."""
    runs = [hf_args(videos, tmp_path / f, folders[f], normalize=None if f == "clip" else "none") for f in FAMILIES]
    runs.append(hf_args(videos, tmp_path / "dinov3_mean", folders["dinov3"], "--pooling", "mean"))
    results = hf_runs(runs)
    from extractor.outputs import read_manifest

    for family, (rc, out, err) in zip(FAMILIES, results):
        assert rc == 0, f"{family}: {err[-2000:]}"
        feats = np.load(tmp_path / family / "clip.npy")
        ref = reference(videos / "clip.mp4", folders[family], family,
                        *((MEAN, STD, "bicubic") if family == "clip" else ()))
        assert feats.shape == ref.shape == (3, 32), family
        assert cosines(feats, ref).min() > 0.9999, (family, cosines(feats, ref))
        entry = read_manifest(tmp_path / family)["clip.mp4"]
        assert entry["model_type"] == "hf" and entry["pooling"] == ("mean" if family in PER_CLIP else "pooler")
    assert "resize 32x32 bicubic antialiased" in results[0][1] and "crop size 32x32" in results[0][1]
    assert "vision tower" in results[0][1] and "whole clips of 16 frames" in results[FAMILIES.index("videomae")][1]
    assert "made for clips of 32 frames" in results[FAMILIES.index("vjepa2")][2]  # V-JEPA 2's note

    rc, out, err = results[-1]  # DINOv3 --pooling mean: the patch tokens' mean, not the class token
    assert rc == 0, err[-2000:]
    feats, pooler = np.load(tmp_path / "dinov3_mean" / "clip.npy"), np.load(tmp_path / "dinov3" / "clip.npy")
    ref = reference(videos / "clip.mp4", folders["dinov3"], "dinov3", pool="mean")
    assert cosines(feats, ref).min() > 0.9999 and np.linalg.norm(feats - pooler) > 0.05 * np.linalg.norm(pooler)
    assert read_manifest(tmp_path / "dinov3_mean")["clip.mp4"]["pooling"] == "mean"


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_pooling_cls_and_mean(folders, pool):
    """CLIP's cls (token 0, before the post-layernorm the pooler applies) and mean (patch tokens
    only) against the model's own hidden states; both differ from the pooler."""
    from extractor.backbones import BackboneOptions, open_backbone

    model = transformers.CLIPModel.from_pretrained(str(folders["clip"])).eval()
    x = torch.rand(2, 3, 3, 32, 32)  # two clips of three frames
    features = {}
    for pooling in (pool, "pooler"):
        backbone = open_backbone("hf", folders["clip"], BackboneOptions(clip_len=3, pooling=pooling))
        assert backbone.pooling == pooling
        with torch.no_grad():
            features[pooling] = backbone.build(torch.device("cpu"), torch.float32)(x).numpy()
    with torch.no_grad():
        hidden = model.vision_model(pixel_values=x.flatten(0, 1)).last_hidden_state
    per_frame = hidden[:, 0] if pool == "cls" else hidden[:, 1:].mean(1)
    ref = per_frame.view(2, 3, -1).mean(1).numpy()
    assert cosines(features[pool], ref).min() > 0.9999
    assert np.linalg.norm(features[pool] - features["pooler"]) > 0.05 * np.linalg.norm(features["pooler"])


def test_bad_folders_exit_2_before_any_work(videos, folders, tmp_path):
    def folder(name, config=None, weights_from=None):
        d = tmp_path / name
        d.mkdir()
        if config is not None:
            (d / "config.json").write_text(json.dumps(config))
        if weights_from is not None:
            (d / "model.safetensors").write_bytes((weights_from / "model.safetensors").read_bytes())
        return d

    clip_config = json.loads((folders["clip"] / "config.json").read_text())
    fewer_layers = json.loads(json.dumps(clip_config))
    fewer_layers["vision_config"]["num_hidden_layers"] = 1  # the file has 2: unexpected vision weights
    more_text = json.loads(json.dumps(clip_config))
    more_text["text_config"]["num_hidden_layers"] = 3  # the text tower is not checked
    cases = [
        (folder("empty"), [], "not a Hugging Face model folder"),
        (folder("bert", {"model_type": "bert", "hidden_size": 32}), [], "'bert' is not a backbone"),
        (folder("naflex", {"model_type": "siglip2"}), [], "NaFlex"),
        (folder("no_weights", clip_config), [], "no weights"),
        (folder("fewer", fewer_layers, folders["clip"]), [], "do not fit"),
        (folders["siglip"], ["--pooling", "cls"], "no class token"),
        (folders["videomae"], ["--pooling", "pooler"], "no pooled output"),
        (folders["videomae"], ["--clip_len", "8"], "takes clips of 16 frames"),
    ]
    runs = [hf_args(videos, tmp_path / f"o{i}", d, *extra) for i, (d, extra, _) in enumerate(cases)]
    runs.append(hf_args(videos, tmp_path / "text", folder("text", more_text, folders["clip"])))
    results = hf_runs(runs)
    for (d, extra, message), (rc, out, err) in zip(cases, results):
        assert rc == 2 and message in err and "Traceback" not in err, (d.name, extra, err[-1500:])
        assert len(err.strip().splitlines()) == 1, err
        assert not list(tmp_path.glob("o*/*.npy"))
    rc, out, err = results[-1]
    assert rc == 0 and (tmp_path / "text" / "clip.npy").exists(), err[-2000:]


def test_dinov3_flag_refuses_other_families(videos, folders, tmp_path):
    res = run_cli("--data_path", videos, "--save_path", tmp_path / "o", "--data_set", "charades", "--model_type",
                  "dinov3", "--ckpt_path", folders["dinov2"], "--device", "cpu")
    assert res.returncode == 2 and "not DINOv3; use --model_type hf" in res.stderr


def test_compile_blocks_finds_every_family_layers(folders):
    """The pipeline's compile_blocks compiles each family's stack of layers (and nothing else)."""
    from extractor.backbones import BackboneOptions, open_backbone
    from extractor.engine import find_blocks

    for family in FAMILIES:
        backbone = open_backbone("hf", folders[family], BackboneOptions(clip_len=CLIP_LEN))
        backbone.build(torch.device("cpu"), torch.float32)
        blocks = find_blocks(backbone.module)
        assert len(blocks) == 2 and len({type(b) for b in blocks}) == 1, (family, [type(b) for b in blocks])
