import pytest
import torch

from conftest import FIXTURES, HF_TINY, MODELS, TINY_CKPT
from extractor.checkpoints import CheckpointError, build_from_checkpoint, read_checkpoint
from extractor.model import VARIANTS, LlavaViT, temporal_positions
from reference import hf_inputs, llava_input


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("name", ["tiny_t4_64px", "tiny_image_64px", "tiny_t16_224px"])
def test_matches_original_implementation(name):
    io = torch.load(FIXTURES / "llava_vit" / f"{name}.io.pt", weights_only=True)
    model = build_from_checkpoint(read_checkpoint(MODELS / f"{name}.ckpt.pt", "auto"))
    with torch.no_grad():
        out = model(llava_input(name))
    assert rel_err(out["head_output"], io["head_output"]) <= 1e-5
    assert rel_err(out["visible_embeddings"], io["visible_embeddings"]) <= 1e-5


def test_state_dict_keys_match_the_original():
    import json

    want = json.loads((FIXTURES / "llava_vit" / "tiny_state_dict_keys.json").read_text())
    ckpt = read_checkpoint(TINY_CKPT, "auto")
    have = {k: list(v.shape) for k, v in build_from_checkpoint(ckpt).state_dict().items()}
    assert have == want


def test_hf_folder_matches_upstream_code():
    io = torch.load(FIXTURES / "onevision_encoder_hf" / "tiny_io.pt", weights_only=True)
    image_in, video_in = hf_inputs()
    ckpt = read_checkpoint(HF_TINY, "llava_vit_base_ln")
    assert ckpt.format == "hf" and "ignored" in ckpt.note
    assert ckpt.config.norm_eps == 1e-6 and ckpt.config.patch_size == 14
    model = build_from_checkpoint(ckpt)
    spread = temporal_positions(16, "spread64")
    assert torch.equal(io["video_patch_positions"][0, ::256, 0], spread)
    with torch.no_grad():
        image = model(image_in)
        video = model(video_in, spread)
        video_contiguous = model(video_in, temporal_positions(16, "contiguous"))
    assert rel_err(image["head_output"], io["image_pooler_output"]) <= 1e-6
    assert rel_err(image["visible_embeddings"], io["image_last_hidden_state"]) <= 1e-6
    assert rel_err(video["head_output"], io["video_pooler_output"]) <= 1e-6
    assert rel_err(video["visible_embeddings"], io["video_last_hidden_state"]) <= 1e-6
    assert rel_err(video_contiguous["head_output"], io["video_nopos_pooler_output"]) <= 1e-6
    assert rel_err(video_contiguous["head_output"], io["video_pooler_output"]) > 1e-6  # the rules differ


def _fixture_state_dict():
    return torch.load(TINY_CKPT, weights_only=True)


def test_wrapped_and_prefixed_checkpoints_load(tmp_path):
    sd = _fixture_state_dict()
    wrapped = {"epoch": 3, "model": {"_orig_mod." + k: v for k, v in sd.items()}}
    torch.save(wrapped, tmp_path / "wrapped.pt")
    a = build_from_checkpoint(read_checkpoint(tmp_path / "wrapped.pt", "auto"))
    torch.save({"weights": sd}, tmp_path / "keyed.pt")
    b = build_from_checkpoint(read_checkpoint(tmp_path / "keyed.pt", "auto", model_key="weights"))
    x = torch.rand(1, 3, 2, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x)["head_output"], b(x)["head_output"])


def test_safetensors_backbone_loads(tmp_path):
    from safetensors.torch import save_file

    sd = {k.removeprefix("module."): v.contiguous() for k, v in _fixture_state_dict().items()}
    save_file(sd, tmp_path / "backbone.safetensors")
    ckpt = read_checkpoint(tmp_path / "backbone.safetensors", "auto")
    assert ckpt.config.width == 128 and ckpt.format == "backbone"


@pytest.mark.parametrize("damage, words", [
    (lambda sd: sd.pop("module.head.norm.weight"), ["missing", "head.norm.weight"]),
    (lambda sd: sd.__setitem__("module.extra.weight", torch.zeros(3)), ["unexpected", "extra.weight"]),
    (lambda sd: sd.__setitem__("module.ln_pre.bias", torch.zeros(7)), ["shape", "ln_pre.bias"]),
])
def test_unfitting_checkpoint_is_refused_by_name(tmp_path, damage, words):
    sd = _fixture_state_dict()
    damage(sd)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(tmp_path / "bad.pt", "auto")
    for word in words:
        assert word in str(err.value)


def test_named_variant_must_fit():
    with pytest.raises(CheckpointError, match="does not fit llava_vit_base_ln.*looks like custom"):
        read_checkpoint(TINY_CKPT, "llava_vit_base_ln")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_builds_with_its_shapes(name):
    cfg = VARIANTS[name]
    with torch.device("meta"):
        model = LlavaViT(cfg)
    sd = model.state_dict()
    assert sd["conv1.weight"].shape == (cfg.width, 3, cfg.patch_size, cfg.patch_size)
    assert sd[f"transformer.layers.{cfg.layers - 1}.mlp.0.weight"].shape == (cfg.mlp_width, cfg.width)
    assert ("ln_pre.bias" in sd) == (cfg.norm == "layer_norm")
    assert "head.norm.bias" not in sd


def test_temporal_position_rules():
    assert temporal_positions(16, "contiguous").tolist() == list(range(16))
    assert temporal_positions(16, "spread64").tolist() == [0, 4, 8, 12, 16, 21, 25, 29, 33, 37, 42, 46, 50, 54, 58, 63]
