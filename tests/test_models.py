"""Tests for noisybench.models: shapes, parameter counts derived by hand or from a second
implementation (torchvision), pre-activation structure, small-image stems, gradient flow and
the config-file registry.

Expected parameter counts are never read from the models under test: they come from formulas
written here from the papers' layer lists (He et al. 2016a/b, Zagoruyko & Komodakis 2016),
from torchvision's independent implementations, or from published totals.
"""

from __future__ import annotations

import functools
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from noisybench.errors import UserError
from noisybench.models import available_models, conf_dir, create_model
from noisybench.models.preact_resnet import PreActBlock

MODEL_CONFS = sorted((Path(__file__).resolve().parents[1] / "conf" / "model").glob("*.yaml"))
# Built and run for real on CPU in the fast tests (a few hundred ms each at batch 2).
LIGHT = ("small_cnn", "preact_resnet18", "resnet18", "wide_resnet40_1", "densenet121")
# Built but not run in the fast tests (their meta-device forward alone takes a second or more).
HEAVY = frozenset(
    {"resnet34", "resnet101", "resnet152", "densenet169", "densenet201", "inception_resnet_v2"}
)
# Networks whose unpadded reductions need more than 32 pixels (Inception-ResNet-v2: 75).
MIN_SIDE = {"inception_resnet_v2": 75}
IMAGE_MODELS = tuple(n for n in (p.stem for p in MODEL_CONFS) if n != "vit_b16")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Use one intra-op thread: on a shared 2-core machine, two OpenMP threads competing with
    other processes make small convolutions tens of times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def meta_model(name: str, k: int = 10, cin: int = 3, **options: object) -> nn.Module:
    """A model built on the meta device (no memory, no real initialisation), shared between
    tests that only inspect structure or shapes."""
    with torch.device("meta"):
        return create_model(name, num_classes=k, in_channels=cin, **options)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv(k: int, cin: int, cout: int) -> int:
    """Weights of a bias-free k x k convolution."""
    return k * k * cin * cout


def bn(c: int) -> int:
    """BatchNorm scale and shift."""
    return 2 * c


def linear(fin: int, fout: int) -> int:
    return fin * fout + fout


def in_channels_of(name: str) -> int:
    return 1 if name == "small_cnn" else 3


def input_for(name: str, batch: int = 2, device: str | None = None) -> torch.Tensor:
    side = 8 if name == "small_cnn" else MIN_SIDE.get(name, 32)
    return torch.randn(batch, in_channels_of(name), side, side, device=device)


# --------------------------------------------------------------------------------------------
# Hand-derived parameter counts


def preact_resnet18_count(k: int, cin: int = 3) -> int:
    """He et al. 2016b, CIFAR PreAct ResNet-18: 3x3 stem conv (no BN); per block BN(in),
    conv3x3, BN(out), conv3x3, plus a 1x1 projection (no BN) where the shape changes; final
    BN(512); linear 512 -> k."""
    total = conv(3, cin, 64)
    in_p = 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for i in range(2):
            s = stride if i == 0 else 1
            total += bn(in_p) + conv(3, in_p, planes) + bn(planes) + conv(3, planes, planes)
            if s != 1 or in_p != planes:
                total += conv(1, in_p, planes)
            in_p = planes
    return total + bn(512) + linear(512, k)


def resnet_bottleneck_count(blocks: tuple[int, ...], k: int, stem: int, cin: int = 3) -> int:
    """He et al. 2016a, Table 1: stem conv + BN; bottlenecks 1x1, 3x3, 1x1 (x4), each + BN;
    projection 1x1 conv + BN where the shape changes; linear 2048 -> k."""
    total = conv(stem, cin, 64) + bn(64)
    in_p = 64
    for planes, stride, n in zip((64, 128, 256, 512), (1, 2, 2, 2), blocks, strict=True):
        out = 4 * planes
        for i in range(n):
            s = stride if i == 0 else 1
            total += conv(1, in_p, planes) + bn(planes)
            total += conv(3, planes, planes) + bn(planes)
            total += conv(1, planes, out) + bn(out)
            if s != 1 or in_p != out:
                total += conv(1, in_p, out) + bn(out)
            in_p = out
    return total + linear(2048, k)


def wrn_count(depth: int, widen: int, k: int, cin: int = 3) -> int:
    """Zagoruyko & Komodakis 2016: 3x3 stem to 16; groups of (depth-4)/6 blocks BN, conv3x3,
    BN, conv3x3 with 1x1 projections (no BN) where the width changes; final BN; linear."""
    n = (depth - 4) // 6
    total = conv(3, cin, 16)
    in_p = 16
    for width, stride in ((16, 1), (32, 2), (64, 2)):
        out = width * widen
        for i in range(n):
            s = stride if i == 0 else 1
            total += bn(in_p) + conv(3, in_p, out) + bn(out) + conv(3, out, out)
            if s != 1 or in_p != out:
                total += conv(1, in_p, out)
            in_p = out
    return total + bn(in_p) + linear(in_p, k)


def test_formula_reproduces_published_resnet50_count() -> None:
    # Guards the hand formula itself: ImageNet ResNet-50 has 25,557,032 parameters.
    assert resnet_bottleneck_count((3, 4, 6, 3), 1000, stem=7) == 25_557_032


@pytest.mark.parametrize("k", [10, 100])
def test_preact_resnet18_parameter_count(k: int) -> None:
    model = meta_model("preact_resnet18", k)
    assert n_params(model) == preact_resnet18_count(k)
    if k == 10:
        assert n_params(model) == 11_172_170


def test_resnet50_cifar_parameter_count() -> None:
    model = meta_model("resnet50", 10)
    assert n_params(model) == resnet_bottleneck_count((3, 4, 6, 3), 10, stem=3)


@pytest.mark.parametrize("k", [10, 100])
def test_wide_resnet40_1_parameter_count(k: int) -> None:
    model = meta_model("wide_resnet40_1", k)
    assert n_params(model) == wrn_count(40, 1, k)


def test_generic_wide_resnet_parameter_count() -> None:
    from noisybench.models.wide_resnet import wide_resnet

    with torch.device("meta"):
        model = wide_resnet(num_classes=10, depth=16, widen_factor=4, dropout=0.3)
    assert n_params(model) == wrn_count(16, 4, 10)


def test_small_cnn_parameter_count() -> None:
    model = create_model("small_cnn", num_classes=10, in_channels=1)
    expected = (
        conv(2, 1, 32) + bn(32) + conv(3, 32, 32) + bn(32) + 32 * 16 * 128 + bn(128)
    ) + linear(128, 10)
    assert n_params(model) == expected
    assert 50_000 <= expected <= 200_000


PUBLISHED_IMAGENET_COUNTS = {  # torchvision model cards, 1000 classes
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "densenet121": 7_978_856,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_IMAGENET_COUNTS))
def test_imagenet_stem_matches_published_counts(name: str) -> None:
    ours = meta_model(name, 1000, imagenet_stem=True)
    assert n_params(ours) == PUBLISHED_IMAGENET_COUNTS[name]


@pytest.mark.parametrize("name", ["resnet50", "densenet121"])
def test_imagenet_stem_matches_torchvision(name: str) -> None:
    """With the ImageNet stem and 1000 classes the count equals that of torchvision's
    ``<name>(weights=None)``, a second, independent implementation."""
    with torch.device("meta"):
        theirs = getattr(torchvision.models, name)(weights=None)
    assert n_params(meta_model(name, 1000, imagenet_stem=True)) == n_params(theirs)


@pytest.mark.parametrize(("name", "features"), [("resnet18", 512), ("densenet121", 1024)])
def test_small_stem_count_from_torchvision(name: str, features: int) -> None:
    """Small-image variant = torchvision's model with the 7x7x3x64 stem conv replaced by a
    3x3x3x64 one (max-pool has no parameters) and a 10-way head."""
    ours = meta_model(name, 10)
    with torch.device("meta"):
        theirs = getattr(torchvision.models, name)(weights=None)
    expected = (
        n_params(theirs)
        - conv(7, 3, 64)
        + conv(3, 3, 64)
        - linear(features, 1000)
        + linear(features, 10)
    )
    assert n_params(ours) == expected


# --------------------------------------------------------------------------------------------
# Stems and spatial sizes


def _conv_output_sides(model: nn.Module, x: torch.Tensor) -> list[int]:
    sides: list[int] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: sides.append(out.shape[-1]))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return sides


@pytest.mark.parametrize("name", [n for n in IMAGE_MODELS if n.startswith(("resnet", "dense"))])
def test_small_image_stem_and_imagenet_stem(name: str) -> None:
    """Paper A.1: a 3x3 stride-1 stem and no max-pool for small images; ``imagenet_stem``
    restores the 7x7 stride-2 convolution and the max-pool."""
    small = meta_model(name, 10)
    big = meta_model(name, 10, imagenet_stem=True)
    first_small = next(m for m in small.modules() if isinstance(m, nn.Conv2d))
    assert (first_small.kernel_size, first_small.stride) == ((3, 3), (1, 1))
    assert not any(isinstance(m, nn.MaxPool2d) for m in small.modules())
    first_big = next(m for m in big.modules() if isinstance(m, nn.Conv2d))
    assert (first_big.kernel_size, first_big.stride) == ((7, 7), (2, 2))
    assert sum(isinstance(m, nn.MaxPool2d) for m in big.modules()) == 1


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "densenet121"])
def test_spatial_sizes_small_and_imagenet_stem(name: str) -> None:
    """Without stem downsampling a 32x32 image ends at 4x4 (three stride-2 stages); the
    ImageNet stem (7x7/2 + max-pool /2) takes 224 down to 7x7."""
    small = meta_model(name, 10)
    big = meta_model(name, 10, imagenet_stem=True)
    with torch.device("meta"):
        sides = _conv_output_sides(small, torch.randn(2, 3, 32, 32))
        assert sides[0] == 32 and sides[-1] == 4
        sides = _conv_output_sides(big, torch.randn(2, 3, 224, 224))
        assert sides[0] == 112 and sides[-1] == 7


# --------------------------------------------------------------------------------------------
# Pre-activation structure (He et al. 2016b)


def _leaf_trace(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor]]:
    """(module, first input) for every leaf module, in execution order."""
    trace: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, inp: trace.append((mod, inp[0])))
        for m in model.modules()
        if not list(m.children())
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return trace


def _randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(c, generator=g))
            m.bias.data.copy_(torch.randn(c, generator=g))


@pytest.mark.parametrize(("cin", "cout", "stride"), [(64, 64, 1), (64, 128, 2)])
def test_preact_block_structure(cin: int, cout: int, stride: int) -> None:
    torch.manual_seed(0)
    block = PreActBlock(cin, cout, stride).eval()
    _randomise_bn(block)
    x = torch.randn(2, cin, 8, 8)
    trace = _leaf_trace(block, x)
    first, first_input = trace[0]
    # The residual branch starts with BN applied to the block input itself.
    assert isinstance(first, nn.BatchNorm2d)
    assert first_input is x
    assert isinstance(trace[1][0], nn.ReLU)
    assert isinstance(trace[-1][0], nn.Conv2d)  # nothing (no BN, no ReLU) after the last conv
    with torch.no_grad():
        out = block(x)
    assert out.shape == (2, cout, 8 // stride, 8 // stride)
    # No activation after the addition: the output takes negative values.
    assert (out < 0).any()
    if stride != 1:
        # Projection shortcut: a 1x1 conv of the pre-activated input ReLU(BN(x)).
        bn1 = first
        expected_pre = F.relu(
            F.batch_norm(x, bn1.running_mean, bn1.running_var, bn1.weight, bn1.bias, eps=bn1.eps)
        )
        one_by_one = [
            (m, inp) for m, inp in trace if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
        ]
        assert len(one_by_one) == 1
        torch.testing.assert_close(one_by_one[0][1], expected_pre)


def test_preact_resnet18_network_structure() -> None:
    torch.manual_seed(0)
    model = create_model("preact_resnet18", num_classes=10).eval()
    trace = _leaf_trace(model, torch.randn(2, 3, 32, 32))
    kinds = [type(m) for m, _ in trace]
    # Stem: one 3x3 conv feeding the first block's BN directly (no stem BN-ReLU, no pool).
    assert kinds[0] is nn.Conv2d and trace[0][0].kernel_size == (3, 3)
    assert kinds[1] is nn.BatchNorm2d
    # Head: final BN-ReLU, global average pooling, linear.
    assert kinds[-4:] == [nn.BatchNorm2d, nn.ReLU, nn.AdaptiveAvgPool2d, nn.Linear]
    assert trace[-1][1].shape == (2, 512) and (trace[-1][1] >= 0).all()
    assert sum(k is PreActBlock for k in map(type, model.modules())) == 8


# --------------------------------------------------------------------------------------------
# Forward shapes and gradient flow (real CPU runs, tiny batches)


@pytest.mark.parametrize("name", LIGHT)
def test_forward_shape_and_gradients_reach_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    k = 7
    model = create_model(name, num_classes=k, in_channels=in_channels_of(name)).train()
    x = input_for(name)
    logits = model(x)
    assert logits.shape == (2, k)
    assert logits.dtype == torch.float32
    F.cross_entropy(logits, torch.tensor([1, 5])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features)
    assert model.head.out_features == k


def test_small_cnn_on_larger_inputs() -> None:
    model = create_model("small_cnn", num_classes=10, in_channels=3).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_one_channel_input(name: str) -> None:
    """Every small-image model takes grey images (in_channels=1)."""
    model = meta_model(name, 3, cin=1)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    if isinstance(first, nn.Linear):  # small_mlp: one channel of grid x grid pooled pixels
        assert first.in_features == model.grid**2
    else:
        assert first.in_channels == 1
    if name not in HEAVY:
        side = 8 if name in ("small_cnn", "small_mlp") else 32
        with torch.device("meta"):
            assert model(torch.randn(2, 1, side, side)).shape == (2, 3)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in IMAGE_MODELS if n not in LIGHT])
def test_heavy_models_forward_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).train()
    logits = model(input_for(name))
    assert logits.shape == (2, 5)
    logits.logsumexp(1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Registry: conf/model/*.yaml and create_model


def test_every_config_file_is_listed() -> None:
    assert conf_dir() / "model" == MODEL_CONFS[0].parent
    assert available_models() == [p.stem for p in MODEL_CONFS]
    assert {"preact_resnet18", "small_cnn", "resnet50", "densenet121", "vit_b16"} <= set(
        available_models()
    )


@pytest.mark.parametrize("path", MODEL_CONFS, ids=lambda p: p.stem)
def test_config_instantiates_like_the_run(path: Path) -> None:
    """Instantiate exactly as the run does (config without ``name`` plus num_classes and
    in_channels), on the meta device so even ResNet-152 and ViT-B build quickly; a forward
    pass on meta tensors checks the logits' shape (skipped for the heavy models)."""
    cfg = OmegaConf.load(path)
    assert cfg.name == path.stem
    assert str(cfg._target_).startswith("noisybench.models.")
    kwargs = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "name"])
    side = {"small_cnn": 8, "vit_b16": int(cfg.get("image_size", 224))}.get(path.stem, 32)
    with torch.device("meta"):
        model = instantiate(kwargs, num_classes=6, in_channels=3)
        assert isinstance(model, nn.Module)
        assert sum(p.numel() for p in model.parameters()) > 0
        if path.stem not in HEAVY:
            assert model(torch.randn(2, 3, side, side)).shape == (2, 6)


@pytest.mark.slow
@pytest.mark.parametrize("path", MODEL_CONFS, ids=lambda p: p.stem)
def test_config_builds_on_cpu(path: Path) -> None:
    cfg = OmegaConf.load(path)
    kwargs = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "name"])
    model = instantiate(kwargs, num_classes=6, in_channels=3)
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in model.parameters())


def test_create_model_by_name_and_overrides() -> None:
    model = create_model("wide_resnet40_1", num_classes=100)
    assert n_params(model) == wrn_count(40, 1, 100)
    big = meta_model("resnet18", 10, imagenet_stem=True)
    first = next(m for m in big.modules() if isinstance(m, nn.Conv2d))
    assert first.kernel_size == (7, 7)
    wrn = create_model("wide_resnet40_1", num_classes=10, dropout=0.3)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in wrn.modules())


def test_create_model_unknown_name_lists_the_choices() -> None:
    with pytest.raises(UserError) as info:
        create_model("resnet9000", num_classes=10)
    message = str(info.value)
    assert "resnet9000" in message
    for name in ("preact_resnet18", "small_cnn", "vit_b16"):
        assert name in message
    assert "\n" not in message


def test_create_model_rejects_path_like_names() -> None:
    with pytest.raises(UserError):
        create_model("../model/resnet18", num_classes=10)


def test_create_model_unknown_option() -> None:
    with pytest.raises(UserError, match="imagenet_stem"):
        create_model("resnet18", num_classes=10, imagenet_stm=True)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet18", {"num_classes": 0}),
        ("small_cnn", {"num_classes": 10, "in_channels": 0}),
        ("wide_resnet40_1", {"num_classes": 10, "dropout": 1.5}),
        ("vit_b16", {"num_classes": 10, "image_size": 30}),
        ("vit_b16", {"num_classes": 10, "in_channels": 1, "pretrained": True}),
    ],
)
def test_bad_sizes_raise_user_error(name: str, kwargs: dict) -> None:
    with torch.device("meta"), pytest.raises(UserError):
        create_model(name, **kwargs)


def test_wide_resnet_rejects_bad_depth() -> None:
    from noisybench.models.wide_resnet import wide_resnet

    with pytest.raises(UserError, match="6n"):
        wide_resnet(num_classes=10, depth=41)


# --------------------------------------------------------------------------------------------
# ViT-B/16


def test_vit_b16_parameter_count_and_shapes() -> None:
    imagenet = meta_model("vit_b16", 1000)
    ours = meta_model("vit_b16", 10)
    small = meta_model("vit_b16", 10, image_size=32)
    with torch.device("meta"):
        assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # Published ViT-B/16 size (Dosovitskiy et al. 2021; torchvision's model card): 86,567,656.
    assert n_params(imagenet) == 86_567_656
    assert n_params(ours) == 86_567_656 - linear(768, 1000) + linear(768, 10)
    # The position embedding follows the patch grid: 2 x 2 patches + class token.
    assert small.backbone.encoder.pos_embedding.shape == (1, 5, 768)


def test_vit_b16_pretrained_without_internet_is_a_user_error(monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with torch.device("meta"), pytest.raises(UserError) as info:
        create_model("vit_b16", num_classes=10, pretrained=True)
    message = str(info.value)
    assert "vit_b_16-c867db91.pth" in message and torch.hub.get_dir() in message
    assert "\n" not in message


@pytest.mark.slow
def test_vit_b16_pretrained_loads_backbone_and_new_head(monkeypatch) -> None:
    """The backbone takes every pretrained tensor (position embedding interpolated for 64x64
    input), the 1000-way head is dropped and the new head starts at zero (ViT paper, 3.2)."""
    torch.manual_seed(0)
    reference = torchvision.models.vit_b_16(weights=None)
    state = reference.state_dict()
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: dict(state))
    model = create_model("vit_b16", num_classes=10, image_size=64, pretrained=True)
    got = model.backbone.state_dict()
    torch.testing.assert_close(got["conv_proj.weight"], state["conv_proj.weight"])
    torch.testing.assert_close(got["encoder.ln.weight"], state["encoder.ln.weight"])
    pos = state["encoder.pos_embedding"]
    torch.testing.assert_close(got["encoder.pos_embedding"][:, :1], pos[:, :1])
    assert got["encoder.pos_embedding"].shape == (1, 1 + 4 * 4, 768)
    assert not any(k.startswith("heads.") and v.numel() for k, v in got.items())
    assert model.head.weight.abs().sum() == 0 and model.head.out_features == 10
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


# --------------------------------------------------------------------------------------------
# small_cnn can memorise noisy labels (what the quickstart must show)


@pytest.mark.slow
def test_small_cnn_memorises_half_random_labels_on_digits() -> None:
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    perm = torch.randperm(len(images), generator=g)[:1300]
    x = images[perm]
    x = (x - x.mean()) / x.std()
    clean = torch.tensor(digits.target)[perm]
    noisy = clean.clone()
    chosen = torch.rand(1300, generator=g) < 0.5
    noisy[chosen] = torch.randint(0, 10, (int(chosen.sum()),), generator=g)
    flipped = noisy != clean
    assert flipped.float().mean() > 0.4

    model = create_model("small_cnn", num_classes=10, in_channels=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        model.train()
        order = torch.randperm(1300, generator=g)
        for i in range(0, 1300, 128):
            b = order[i : i + 128]
            loss = F.cross_entropy(model(x[b]), noisy[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(1)
    # The flipped samples are fitted to their *wrong* labels: memorisation.
    assert (pred[flipped] == noisy[flipped]).float().mean() > 0.9


# --------------------------------------------------------------------------------------------
# DivideMix's PreResNet18


def test_preact_resnet18_dividemix_parameter_count() -> None:
    """DivideMix's PreResNet18 = He's count + stem BN(64) - final BN(512)."""
    for k in (10, 100):
        model = meta_model("preact_resnet18_dividemix", k)
        assert n_params(model) == preact_resnet18_count(k) + bn(64) - bn(512)
    assert n_params(meta_model("preact_resnet18_dividemix", 10)) == 11_171_274


def test_preact_resnet18_dividemix_forward_equals_a_hand_written_preresnet() -> None:
    """A second implementation of DivideMix's PreResNet.py forward (conv-BN-ReLU stem, the
    PreActBlocks, avg_pool2d(4), linear, no final BN) on the model's own weights."""
    torch.manual_seed(0)
    model = create_model("preact_resnet18_dividemix", num_classes=10).eval()
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 32, 32)

    def bn_eval(b: nn.BatchNorm2d, t: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(t, b.running_mean, b.running_var, b.weight, b.bias, False, 0.0, b.eps)

    stem_conv, stem_bn = model.stem[0], model.stem[1]
    out = F.relu(bn_eval(stem_bn, F.conv2d(x, stem_conv.weight, padding=1)))
    for block in (b for stage in model.stages for b in stage):
        pre = F.relu(bn_eval(block.bn1, out))
        stride = block.conv1.stride
        short = (
            out if block.shortcut is None else F.conv2d(pre, block.shortcut.weight, stride=stride)
        )
        mid = F.relu(
            bn_eval(block.bn2, F.conv2d(pre, block.conv1.weight, stride=stride, padding=1))
        )
        out = F.conv2d(mid, block.conv2.weight, padding=1) + short
    pooled = F.avg_pool2d(out, 4).flatten(1)
    expected = F.linear(pooled, model.head.weight, model.head.bias)
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
    # and He et al.'s variant differs (it adds the final BN-ReLU, no stem BN)
    he = create_model("preact_resnet18", num_classes=10)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in [getattr(he.stem, "1", None)])
    assert isinstance(he.final_bn, nn.BatchNorm2d) and isinstance(model.final_bn, nn.Identity)
