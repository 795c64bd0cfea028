"""The reference models and inputs of tests/fixtures, rebuilt from seeds, and the stored
reference outputs (fixtures/README.md says how both were made and checked)."""

import shutil
from pathlib import Path

import torch
from torch import nn

from extractor.model import LlavaViT, ViTConfig

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OUTPUTS = FIXTURES / "reference_outputs.safetensors"
LLAVA_CONFIG = ViTConfig(patch_size=16, width=128, layers=2, head_dim=64, mlp_width=256)
LLAVA_CASES = {"tiny_t4_64px": (0, (2, 3, 4, 64, 64)), "tiny_t16_224px": (10, (1, 3, 16, 224, 224)),
               "tiny_image_64px": (20, (2, 3, 1, 64, 96))}  # name: (seed, input shape)
SKETCH_SIZE = 32768


def llava_state_dict(seed: int) -> dict:
    """The original's construction init after manual_seed(seed), then every 1-d parameter
    but the head's in_proj_bias moved by 0.1 * randn; keys prefixed module."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaViT(LLAVA_CONFIG)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() == 1 and not name.endswith("in_proj_bias"):
                    p.add_(torch.randn_like(p) * 0.1)
    return {"module." + k: v for k, v in model.state_dict().items()}


def llava_input(name: str) -> torch.Tensor:
    seed, shape = LLAVA_CASES[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        return torch.rand(shape)


def hf_weight_shapes(width: int = 128, mlp: int = 256) -> dict:
    """The linear and conv weights, in the order Hugging Face's _init_weights redrew them."""
    square, fc1, fc2 = (width, width), (mlp, width), (width, mlp)
    shapes = {"embeddings.patch_embedding.weight": (width, 3, 14, 14)}
    for i in range(2):
        for name, shape in (("k_proj", square), ("v_proj", square), ("q_proj", square), ("out_proj", square)):
            shapes[f"encoder.layers.{i}.self_attn.{name}.weight"] = shape
        shapes[f"encoder.layers.{i}.mlp.fc1.weight"] = fc1
        shapes[f"encoder.layers.{i}.mlp.fc2.weight"] = fc2
    shapes.update({"head.attention.out_proj.weight": square, "head.mlp.fc1.weight": fc1, "head.mlp.fc2.weight": fc2})
    return shapes


def hf_vector_sizes(width: int = 128, mlp: int = 256) -> dict:
    """The norms' and biases' sizes, in the order they were perturbed."""
    sizes = {"layernorm_pre.weight": width, "layernorm_pre.bias": width}
    for i in range(2):
        p = f"encoder.layers.{i}."
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            sizes[f"{p}self_attn.{name}.bias"] = width
        sizes.update({p + "layer_norm1.weight": width, p + "layer_norm1.bias": width, p + "mlp.fc1.bias": mlp,
                      p + "mlp.fc2.bias": width, p + "layer_norm2.weight": width, p + "layer_norm2.bias": width})
    sizes.update({"layernorm_post.weight": width, "layernorm_post.bias": width, "head.attention.out_proj.bias": width,
                  "head.norm.weight": width, "head.mlp.fc1.bias": mlp, "head.mlp.fc2.bias": width})
    return sizes


def hf_state_dict() -> dict:
    """The upstream model's weights in its Hugging Face names. Each tensor is a run of the
    global generator's stream after manual_seed(7) (one draw per float32 element of
    rand, randn, uniform_ and normal_ of 16 elements or more; torch.rand(k) skips k):
    the PyTorch default inits drew 470912 numbers, of which the probe and the head's
    in_proj_weight survive, then _init_weights redrew the linear and conv weights with
    normal(0, 0.02), then norm weights (from 1) and biases (from 0) moved by 0.1 * randn."""
    sd = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        torch.rand(339200)
        sd["head.probe"] = torch.randn(1, 1, 128)
        torch.rand(355840 - 339200 - 128)
        sd["head.attention.in_proj_weight"] = nn.init.xavier_uniform_(torch.empty(384, 128))
        torch.rand(470912 - 355840 - 384 * 128)
        for name, shape in hf_weight_shapes().items():
            sd[name] = torch.empty(shape).normal_(0, 0.02)
        for name, size in hf_vector_sizes().items():
            sd[name] = (1.0 if name.endswith("weight") else 0.0) + torch.randn(size) * 0.1
    sd["head.attention.in_proj_bias"] = torch.zeros(384)
    return sd


def hf_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """(image (2, 3, 224, 224), video (1, 3, 16, 224, 224)), uniform in [-1, 1)."""
    g = torch.Generator().manual_seed(8)
    image = torch.rand((2, 3, 224, 224), generator=g) * 2 - 1
    return image, torch.rand((1, 3, 16, 224, 224), generator=g) * 2 - 1


def write_models(folder: Path) -> None:
    """{name}.ckpt.pt for each LLaVA case and the Hugging Face folder onevision_encoder_hf_tiny."""
    from safetensors.torch import save_file

    for name, (seed, _) in LLAVA_CASES.items():
        torch.save(llava_state_dict(seed), folder / f"{name}.ckpt.pt")
    hf = folder / "onevision_encoder_hf_tiny"
    hf.mkdir()
    shutil.copy(FIXTURES / "onevision_encoder_hf" / "tiny" / "config.json", hf / "config.json")
    save_file(hf_state_dict(), hf / "model.safetensors", metadata={"format": "pt"})


def count_sketch(x: torch.Tensor, size: int = SKETCH_SIZE) -> torch.Tensor:
    """Every element of x times a random sign, summed into one of `size` random buckets
    (float64; the same signs and buckets for every x of a size). For any fixed e,
    ||count_sketch(e)||^2 has mean ||e||^2 and relative standard deviation below
    sqrt(2 / size): 0.8% here, 0.4% on the norm, whatever the shape of e."""
    g = torch.Generator().manual_seed(0)
    bucket = torch.randint(size, (x.numel(),), generator=g)
    sign = torch.randint(2, (x.numel(),), generator=g).double() * 2 - 1
    return torch.zeros(size, dtype=torch.float64).index_add_(0, bucket, x.detach().flatten().double() * sign)


def reference_outputs() -> dict:
    from safetensors.torch import load_file

    return load_file(OUTPUTS)


def rel_err_to_reference(out: torch.Tensor, refs: dict, key: str) -> float:
    """||out - ref|| / ||ref|| against the stored tensor, or for a large one through its count
    sketch and exact norm (ref = key.sketch, key.norm, key.shape)."""
    if key in refs:
        ref = refs[key].double()
        assert out.shape == ref.shape
        return ((out.double() - ref).norm() / ref.norm()).item()
    assert list(out.shape) == refs[key + ".shape"].tolist()
    return ((count_sketch(out) - refs[key + ".sketch"].double()).norm() / refs[key + ".norm"]).item()
