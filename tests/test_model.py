import pytest
import torch

from conftest import FIXTURES, HF_TINY, MODELS, TINY_CKPT
from extractor.checkpoints import CheckpointError, build_from_checkpoint, read_checkpoint
from extractor.model import VARIANTS, LlavaViT, temporal_positions
from reference import count_sketch, hf_inputs, llava_input, reference_outputs, rel_err_to_reference


@pytest.mark.parametrize("name", ["tiny_t4_64px", "tiny_image_64px", "tiny_t16_224px"])
def test_matches_original_implementation(name):
    refs = reference_outputs()
    model = build_from_checkpoint(read_checkpoint(MODELS / f"{name}.ckpt.pt", "auto"))
    with torch.no_grad():
        out = model(llava_input(name))
    assert rel_err_to_reference(out["head_output"], refs, f"{name}.head_output") <= 1e-5
    assert rel_err_to_reference(out["visible_embeddings"], refs, f"{name}.visible_embeddings") <= 1e-5


def test_state_dict_keys_match_the_original():
    import json

    want = json.loads((FIXTURES / "llava_vit" / "tiny_state_dict_keys.json").read_text())
    ckpt = read_checkpoint(TINY_CKPT, "auto")
    have = {k: list(v.shape) for k, v in build_from_checkpoint(ckpt).state_dict().items()}
    assert have == want


def test_hf_folder_matches_upstream_code():
    refs = reference_outputs()
    image_in, video_in = hf_inputs()
    ckpt = read_checkpoint(HF_TINY, "llava_vit_base_ln")
    assert ckpt.format == "hf" and "ignored" in ckpt.note
    assert ckpt.config.norm_eps == 1e-6 and ckpt.config.patch_size == 14
    model = build_from_checkpoint(ckpt)
    spread = temporal_positions(16, "spread64")
    with torch.no_grad():
        image = model(image_in)
        video = model(video_in, spread)
        video_contiguous = model(video_in, temporal_positions(16, "contiguous"))
    assert rel_err_to_reference(image["head_output"], refs, "hf.image_pooler_output") <= 1e-6
    assert rel_err_to_reference(image["visible_embeddings"], refs, "hf.image_last_hidden_state") <= 1e-6
    assert rel_err_to_reference(video["head_output"], refs, "hf.video_pooler_output") <= 1e-6
    assert rel_err_to_reference(video["visible_embeddings"], refs, "hf.video_last_hidden_state") <= 1e-6
    assert rel_err_to_reference(video_contiguous["head_output"], refs, "hf.video_nopos_pooler_output") <= 1e-6
    assert rel_err_to_reference(video_contiguous["head_output"], refs, "hf.video_pooler_output") > 1e-6  # rules differ


def test_sketch_tracks_the_full_error():
    """The count sketch of a hidden state measures the relative error of the full tensor to
    within 2% for the faults the comparisons exist to catch: the other temporal position
    rule, a norm eps of 1e-5 for 1e-6, weights off by 1e-5 relative, one shifted bias."""
    import dataclasses

    ckpt = read_checkpoint(HF_TINY, None)
    _, video = hf_inputs()
    spread = temporal_positions(16, "spread64")
    g = torch.Generator().manual_seed(1)
    sd = ckpt.state_dict
    noisy = {k: v * (1 + 1e-5 * torch.randn(v.shape, generator=g)) for k, v in sd.items()}
    shifted = {**sd, "ln_post.bias": sd["ln_post.bias"] + 1e-6 * torch.randn(128, generator=g)}
    faults = [(ckpt, temporal_positions(16, "contiguous")),
              (dataclasses.replace(ckpt, config=dataclasses.replace(ckpt.config, norm_eps=1e-5)), spread),
              (dataclasses.replace(ckpt, state_dict=noisy), spread),
              (dataclasses.replace(ckpt, state_dict=shifted), spread)]
    with torch.no_grad():
        good = build_from_checkpoint(ckpt)(video, spread)["visible_embeddings"]
        for faulty, t_pos in faults:
            diff = build_from_checkpoint(faulty)(video, t_pos)["visible_embeddings"] - good
            assert 0.98 <= (count_sketch(diff).norm() / diff.double().norm()).item() <= 1.02


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
    # spread64: the time coordinates of each frame's patches in the upstream code's video_patch_positions
    assert temporal_positions(16, "spread64").tolist() == [0, 4, 8, 12, 16, 21, 25, 29, 33, 37, 42, 46, 50, 54, 58, 63]
