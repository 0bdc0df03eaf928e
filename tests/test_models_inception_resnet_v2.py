"""Inception-ResNet-v2 (noisybench/models/inception_resnet_v2.py) against numbers worked out
independently of it:

- the parameter count from the layer widths of the released network (TF-slim's, which
  Cadene's ``pretrainedmodels``, timm and DivideMix's / ELR+'s copies follow), summed by hand
  below; it reproduces the published 55,843,464 for 1000 classes;
- ``Reference``: Cadene's ``pretrainedmodels/models/inceptionresnetv2.py`` (the module DivideMix
  copied into ``InceptionResNetV2.py``) transcribed into this test; its parameter count, and
  its feature map computed with the same weights, must equal the model's;
- the spatial sides, from the output-size rule floor((n + 2p - k) / s) + 1 of each layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from noisybench.data.views import IMAGENET_MEAN, input_stats
from noisybench.errors import UserError
from noisybench.models import create_model
from noisybench.models.inception_resnet_v2 import (
    InceptionResNetV2,
    ResidualInception,
    inception_resnet_v2,
    reference_key,
)

# --------------------------------------------------------------------------------------------
# The reference: Cadene/pretrained-models.pytorch, pretrainedmodels/models/inceptionresnetv2.py
# (commit 939ac86), transcribed. One change: ``avgpool_1a`` is global (timm's and ELR+'s
# choice) so that it runs below 299 pixels; at 299 Cadene's AvgPool2d(8) sees an 8 x 8 map and
# is the same operation.


class BasicConv2d(nn.Module):
    def __init__(self, in_planes, out_planes, kernel_size, stride, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(
            in_planes,
            out_planes,
            kernel_size=kernel_size,
            stride=stride,
            padding=padding,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_planes, eps=0.001, momentum=0.1, affine=True)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class Mixed_5b(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = BasicConv2d(192, 96, kernel_size=1, stride=1)
        self.branch1 = nn.Sequential(
            BasicConv2d(192, 48, kernel_size=1, stride=1),
            BasicConv2d(48, 64, kernel_size=5, stride=1, padding=2),
        )
        self.branch2 = nn.Sequential(
            BasicConv2d(192, 64, kernel_size=1, stride=1),
            BasicConv2d(64, 96, kernel_size=3, stride=1, padding=1),
            BasicConv2d(96, 96, kernel_size=3, stride=1, padding=1),
        )
        self.branch3 = nn.Sequential(
            nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
            BasicConv2d(192, 64, kernel_size=1, stride=1),
        )

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class Block35(nn.Module):
    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(320, 32, kernel_size=1, stride=1)
        self.branch1 = nn.Sequential(
            BasicConv2d(320, 32, kernel_size=1, stride=1),
            BasicConv2d(32, 32, kernel_size=3, stride=1, padding=1),
        )
        self.branch2 = nn.Sequential(
            BasicConv2d(320, 32, kernel_size=1, stride=1),
            BasicConv2d(32, 48, kernel_size=3, stride=1, padding=1),
            BasicConv2d(48, 64, kernel_size=3, stride=1, padding=1),
        )
        self.conv2d = nn.Conv2d(128, 320, kernel_size=1, stride=1)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x):
        out = torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)
        out = self.conv2d(out)
        out = out * self.scale + x
        return self.relu(out)


class Mixed_6a(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = BasicConv2d(320, 384, kernel_size=3, stride=2)
        self.branch1 = nn.Sequential(
            BasicConv2d(320, 256, kernel_size=1, stride=1),
            BasicConv2d(256, 256, kernel_size=3, stride=1, padding=1),
            BasicConv2d(256, 384, kernel_size=3, stride=2),
        )
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


class Block17(nn.Module):
    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(1088, 192, kernel_size=1, stride=1)
        self.branch1 = nn.Sequential(
            BasicConv2d(1088, 128, kernel_size=1, stride=1),
            BasicConv2d(128, 160, kernel_size=(1, 7), stride=1, padding=(0, 3)),
            BasicConv2d(160, 192, kernel_size=(7, 1), stride=1, padding=(3, 0)),
        )
        self.conv2d = nn.Conv2d(384, 1088, kernel_size=1, stride=1)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x):
        out = torch.cat((self.branch0(x), self.branch1(x)), 1)
        out = self.conv2d(out)
        out = out * self.scale + x
        return self.relu(out)


class Mixed_7a(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(
            BasicConv2d(1088, 256, kernel_size=1, stride=1),
            BasicConv2d(256, 384, kernel_size=3, stride=2),
        )
        self.branch1 = nn.Sequential(
            BasicConv2d(1088, 256, kernel_size=1, stride=1),
            BasicConv2d(256, 288, kernel_size=3, stride=2),
        )
        self.branch2 = nn.Sequential(
            BasicConv2d(1088, 256, kernel_size=1, stride=1),
            BasicConv2d(256, 288, kernel_size=3, stride=1, padding=1),
            BasicConv2d(288, 320, kernel_size=3, stride=2),
        )
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class Block8(nn.Module):
    def __init__(self, scale=1.0, noReLU=False):
        super().__init__()
        self.scale = scale
        self.noReLU = noReLU
        self.branch0 = BasicConv2d(2080, 192, kernel_size=1, stride=1)
        self.branch1 = nn.Sequential(
            BasicConv2d(2080, 192, kernel_size=1, stride=1),
            BasicConv2d(192, 224, kernel_size=(1, 3), stride=1, padding=(0, 1)),
            BasicConv2d(224, 256, kernel_size=(3, 1), stride=1, padding=(1, 0)),
        )
        self.conv2d = nn.Conv2d(448, 2080, kernel_size=1, stride=1)
        if not self.noReLU:
            self.relu = nn.ReLU(inplace=False)

    def forward(self, x):
        out = torch.cat((self.branch0(x), self.branch1(x)), 1)
        out = self.conv2d(out)
        out = out * self.scale + x
        if not self.noReLU:
            out = self.relu(out)
        return out


class Reference(nn.Module):
    """Cadene's ``InceptionResNetV2``; ``classifier="classif"`` names the last layer as timm
    does (timm's module is otherwise the same, key for key)."""

    def __init__(self, num_classes=1001, classifier="last_linear"):
        super().__init__()
        self.conv2d_1a = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.conv2d_2a = BasicConv2d(32, 32, kernel_size=3, stride=1)
        self.conv2d_2b = BasicConv2d(32, 64, kernel_size=3, stride=1, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(64, 80, kernel_size=1, stride=1)
        self.conv2d_4a = BasicConv2d(80, 192, kernel_size=3, stride=1)
        self.maxpool_5a = nn.MaxPool2d(3, stride=2)
        self.mixed_5b = Mixed_5b()
        self.repeat = nn.Sequential(*[Block35(scale=0.17) for _ in range(10)])
        self.mixed_6a = Mixed_6a()
        self.repeat_1 = nn.Sequential(*[Block17(scale=0.10) for _ in range(20)])
        self.mixed_7a = Mixed_7a()
        self.repeat_2 = nn.Sequential(*[Block8(scale=0.20) for _ in range(9)])
        self.block8 = Block8(noReLU=True)
        self.conv2d_7b = BasicConv2d(2080, 1536, kernel_size=1, stride=1)
        self.avgpool_1a = nn.AdaptiveAvgPool2d(
            1
        )  # Cadene: nn.AvgPool2d(8, count_include_pad=False)
        self.classifier = classifier
        setattr(self, classifier, nn.Linear(1536, num_classes))

    def features(self, x):
        x = self.conv2d_1a(x)
        x = self.conv2d_2a(x)
        x = self.conv2d_2b(x)
        x = self.maxpool_3a(x)
        x = self.conv2d_3b(x)
        x = self.conv2d_4a(x)
        x = self.maxpool_5a(x)
        x = self.mixed_5b(x)
        x = self.repeat(x)
        x = self.mixed_6a(x)
        x = self.repeat_1(x)
        x = self.mixed_7a(x)
        x = self.repeat_2(x)
        x = self.block8(x)
        return self.conv2d_7b(x)

    def forward(self, x):
        x = self.avgpool_1a(self.features(x)).flatten(1)
        return getattr(self, self.classifier)(x)


# --------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def unit(cin: int, cout: int, kh: int, kw: int | None = None) -> int:
    """A bias-free kh x kw convolution followed by BatchNorm (scale and shift)."""
    return kh * (kh if kw is None else kw) * cin * cout + 2 * cout


def hand_count(k: int) -> int:
    """The released network's parameters, layer by layer (widths of TF-slim's
    ``inception_resnet_v2``, Szegedy et al. 2017 Figs. 7, 16-19 with its stem)."""
    stem = unit(3, 32, 3) + unit(32, 32, 3) + unit(32, 64, 3) + unit(64, 80, 1) + unit(80, 192, 3)
    mixed_5b = (
        unit(192, 96, 1)
        + unit(192, 48, 1)
        + unit(48, 64, 5)
        + unit(192, 64, 1)
        + unit(64, 96, 3)
        + unit(96, 96, 3)
        + unit(192, 64, 1)
    )
    block_a = (
        unit(320, 32, 1)
        + unit(320, 32, 1)
        + unit(32, 32, 3)
        + unit(320, 32, 1)
        + unit(32, 48, 3)
        + unit(48, 64, 3)
        + (128 * 320 + 320)  # linear 1x1 back to the trunk, with bias
    )
    reduction_a = unit(320, 384, 3) + unit(320, 256, 1) + unit(256, 256, 3) + unit(256, 384, 3)
    block_b = (
        unit(1088, 192, 1)
        + unit(1088, 128, 1)
        + unit(128, 160, 1, 7)
        + unit(160, 192, 7, 1)
        + (384 * 1088 + 1088)
    )
    reduction_b = (
        unit(1088, 256, 1)
        + unit(256, 384, 3)
        + unit(1088, 256, 1)
        + unit(256, 288, 3)
        + unit(1088, 256, 1)
        + unit(256, 288, 3)
        + unit(288, 320, 3)
    )
    block_c = (
        unit(2080, 192, 1)
        + unit(2080, 192, 1)
        + unit(192, 224, 1, 3)
        + unit(224, 256, 3, 1)
        + (448 * 2080 + 2080)
    )
    body = stem + mixed_5b + 10 * block_a + reduction_a + 20 * block_b + reduction_b
    body += 10 * block_c + unit(2080, 1536, 1)
    return body + 1536 * k + k


def side(n: int, k: int, s: int = 1, p: int = 0) -> int:
    return (n + 2 * p - k) // s + 1


def sides(n: int) -> tuple[int, int, int]:
    """Map sides after the stem, Reduction-A and Reduction-B, layer by layer."""
    n = side(n, 3, 2)  # conv 3x3/2 V
    n = side(n, 3)  # conv 3x3 V
    n = side(n, 3, 1, 1)  # conv 3x3 padded
    n = side(n, 3, 2)  # max-pool 3x3/2 V
    n = side(n, 3)  # conv 1x1, conv 3x3 V
    n = side(n, 3, 2)  # max-pool 3x3/2 V; Mixed_5b keeps the side
    a = side(n, 3, 2)
    return n, a, side(a, 3, 2)


# --------------------------------------------------------------------------------------------
# Parameter counts


def test_hand_count_is_the_published_one() -> None:
    assert hand_count(1000) == 55_843_464  # timm / Cadene: 55.84 M at 1000 classes


@pytest.mark.parametrize("k", [1000, 1001, 50])
def test_parameter_count_equals_hand_count_and_reference(k: int) -> None:
    with torch.device("meta"):
        ours = create_model("inception_resnet_v2", num_classes=k)
        ref = Reference(num_classes=k)
    assert n_params(ours) == hand_count(k) == n_params(ref)
    assert ours.num_features == 1536 and ours.head.in_features == 1536


def test_block_counts_scales_and_last_relu() -> None:
    with torch.device("meta"):
        model = create_model("inception_resnet_v2", num_classes=10)
    for blocks, n, scale in (
        (model.blocks_a, 10, 0.17),
        (model.blocks_b, 20, 0.10),
        (model.blocks_c[:9], 9, 0.20),
    ):
        assert len(blocks) == n
        assert all(isinstance(b, ResidualInception) and b.scale == scale for b in blocks)
    # the reference's ``block8 = Block8(noReLU=True)``: default scale 1.0, no ReLU
    assert len(model.blocks_c) == 10 and model.blocks_c[9].scale == 1.0
    assert [b.relu for b in model.blocks_c] == [True] * 9 + [False]
    assert all(b.relu for b in (*model.blocks_a, *model.blocks_b))


# --------------------------------------------------------------------------------------------
# Shapes at 299 x 299 (one real forward pass of one image)


@pytest.fixture(scope="module")
def traced() -> dict[str, torch.Size]:
    torch.manual_seed(0)
    model = create_model("inception_resnet_v2", num_classes=50).eval()
    shapes: dict[str, torch.Size] = {}
    names = ("stem", "blocks_a", "reduction_a", "blocks_b", "reduction_b", "blocks_c", "final")
    for name in names:
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: shapes.__setitem__(name, out.shape)
        )
    with torch.inference_mode():
        x = torch.randn(1, 3, 299, 299)
        shapes["logits"] = model(x).shape
        shapes["features"] = model.forward_features(x).shape
    return shapes


def test_block_output_shapes_at_299(traced: dict[str, torch.Size]) -> None:
    s35, s17, s8 = sides(299)
    assert (s35, s17, s8) == (35, 17, 8)  # the sides printed in the paper's Figs. 7-19
    expected = {
        "stem": (1, 96 + 64 + 96 + 64, s35, s35),
        "blocks_a": (1, 320, s35, s35),
        "reduction_a": (1, 384 + 384 + 320, s17, s17),
        "blocks_b": (1, 1088, s17, s17),
        "reduction_b": (1, 384 + 288 + 320 + 1088, s8, s8),
        "blocks_c": (1, 2080, s8, s8),
        "final": (1, 1536, s8, s8),
        "features": (1, 1536),
        "logits": (1, 50),
    }
    assert {k: tuple(v) for k, v in traced.items()} == expected


@pytest.mark.parametrize("n", [75, 227, 320])
def test_other_sides_and_the_smallest_input(n: int) -> None:
    with torch.device("meta"):
        model = create_model("inception_resnet_v2", num_classes=5).eval()
        s8 = sides(n)[2]
        assert model.final(model.blocks_c(torch.randn(1, 2080, s8, s8))).shape[-1] == s8
        assert model.forward_features(torch.randn(2, 3, n, n)).shape == (2, 1536)
    # 227 (the crop of DivideMix's first release and ELR+) ends at 5 x 5, which Cadene's
    # AvgPool2d(8) cannot pool; DivideMix moved to 299 crops of 320-resized images.
    assert sides(227)[2] == 5 and sides(75)[2] == 1 and sides(74)[2] == 0


def test_smaller_than_75_is_one_line_user_error() -> None:
    with torch.device("meta"):
        model = create_model("inception_resnet_v2", num_classes=5)
        with pytest.raises(UserError, match="image_size=299") as info:
            model(torch.randn(1, 3, 74, 120))
        assert "\n" not in str(info.value)
        # and the check is not stricter than the network: without it, 74 fails in Reduction-B
        x = model.reduction_a(model.blocks_a(model.stem(torch.randn(1, 3, 74, 74))))
        with pytest.raises(RuntimeError):
            model.reduction_b(x)


@pytest.mark.slow
def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    model = create_model("inception_resnet_v2", num_classes=3, dropout=0.2).train()
    logits = model(torch.randn(2, 3, 75, 75))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_one_channel_and_dropout() -> None:
    with torch.device("meta"):
        grey = create_model("inception_resnet_v2", num_classes=4, in_channels=1, dropout=0.2)
        assert grey.stem[0].conv.in_channels == 1
        assert grey(torch.randn(2, 1, 80, 80)).shape == (2, 4)
    assert grey.dropout.p == 0.2
    with pytest.raises(UserError, match="dropout"):
        inception_resnet_v2(num_classes=4, dropout=1.0)


# --------------------------------------------------------------------------------------------
# Weights in Cadene's / timm's layout


def _compact(shapes: dict[str, torch.Size], seed: int) -> dict[str, torch.Tensor]:
    """Plausible random tensors stored compactly: each is a strided window over a short random
    vector (row stride 3), so the file stays small while rows differ. BatchNorm variances are
    positive, scales near 1; convolution weights scaled by 1/sqrt(fan-in)."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
            continue
        inner = math.prod(shape[1:])
        base = torch.randn(inner + 3 * shape[0], generator=gen)
        if len(shape) == 1:
            base = base[: shape[0]].clone()
            if key.endswith("running_var"):
                base = 0.5 + base.abs()
            elif key.endswith(".weight"):
                base = 1 + 0.1 * base
            else:
                base = 0.1 * base
            state[key] = base
            continue
        base = base / math.sqrt(inner)
        strides = [3] + [math.prod(shape[i + 1 :]) for i in range(1, len(shape))]
        state[key] = base.as_strided(tuple(shape), strides)
    return state


@pytest.fixture(scope="module")
def reference_weights(tmp_path_factory) -> tuple[Reference, Path, Path]:
    """A reference network holding compact random weights, and two files of them: Cadene's
    layout (``last_linear``, 1001 classes) without ``num_batches_tracked`` (as the ported
    checkpoint), and timm's (``classif``, 1000 classes)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Reference(1001).state_dict().items()}
    state = _compact(shapes, seed=0)
    ref = Reference(1001)
    ref.load_state_dict(state)
    ref.eval()
    folder = tmp_path_factory.mktemp("irv2")
    cadene = folder / "inceptionresnetv2-cadene.pth"
    torch.save({k: v for k, v in state.items() if "num_batches" not in k}, cadene)
    timm = folder / "inception_resnet_v2-timm.pth"
    renamed = {k.replace("last_linear.", "classif."): v for k, v in state.items()}
    renamed["classif.weight"], renamed["classif.bias"] = torch.zeros(1000, 1536), torch.zeros(1000)
    torch.save(renamed, timm)
    assert cadene.stat().st_size < 5_000_000
    return ref, cadene, timm


def test_reference_keys_map_one_to_one() -> None:
    with torch.device("meta"):
        ours = InceptionResNetV2(10).state_dict()
        ref = Reference(10).state_dict()
    body = [k for k in ref if not k.startswith("last_linear.")]
    mapped = [reference_key(k) for k in body]
    assert sorted(mapped) == sorted(k for k in ours if not k.startswith("head."))
    for k in body:
        assert ours[reference_key(k)].shape == ref[k].shape, k
    assert reference_key("repeat.3.branch2.1.bn.running_var") == (
        "blocks_a.3.mix.paths.2.1.bn.running_var"
    )
    assert reference_key("block8.conv2d.weight") == "blocks_c.9.project.weight"
    assert reference_key("mixed_5b.branch3.1.conv.weight") == "stem.7.paths.3.1.conv.weight"
    assert reference_key("mixed_6a.branch0.bn.bias") == "reduction_a.paths.0.0.bn.bias"


@pytest.mark.parametrize("layout", ["cadene", "timm"])
def test_loaded_weights_compute_the_references_features(
    layout: str, reference_weights: tuple[Reference, Path, Path]
) -> None:
    ref, cadene, timm = reference_weights
    path = cadene if layout == "cadene" else timm
    model = create_model("inception_resnet_v2", num_classes=50, weights=str(path)).eval()
    x = torch.randn(2, 3, 107, 107, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = ref.features(x)
        got = model.feature_map(x)
    assert expected.abs().max() > 0.1 and torch.isfinite(expected).all()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert model.head.out_features == 50  # a fresh head, not the file's classifier
    assert model.input_stats == "inception"
    assert input_stats(model, IMAGENET_MEAN, (0.2, 0.2, 0.2)) == ((0.5,) * 3, (0.5,) * 3)
    if layout == "timm":  # the file's counters are kept
        assert int(model.blocks_a[0].mix.paths[0][0].bn.num_batches_tracked) == 7


def test_own_layout_round_trip(tmp_path: Path) -> None:
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in InceptionResNetV2(7).state_dict().items()}
    state = _compact(shapes, seed=2)
    path = tmp_path / "own.pth"
    torch.save({"state_dict": state}, path)
    model = inception_resnet_v2(num_classes=3, weights=str(path), input_stats="dataset")
    got = model.state_dict()
    for key, value in state.items():
        if not key.startswith("head."):
            assert torch.equal(got[key], value), key
    assert model.head.weight.shape == (3, 1536)
    assert input_stats(model, (0.1, 0.2, 0.3), (0.4,) * 3) == ((0.1, 0.2, 0.3), (0.4,) * 3)


@pytest.mark.filterwarnings("ignore:for .*meta parameter:UserWarning")
def test_bad_weights_are_one_line_user_errors(tmp_path: Path) -> None:
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Reference(1001).state_dict().items()}
    state = _compact(shapes, seed=3)
    stranger = tmp_path / "stranger.pth"
    torch.save({**state, "aux_logits.weight": torch.zeros(2)}, stranger)
    short = tmp_path / "short.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("repeat_2.4.")}, short)
    cases = [
        (dict(weights=str(stranger)), "aux_logits"),
        (dict(weights=str(short)), "do not fit"),
        (dict(weights=str(tmp_path / "none.pth")), "does not exist"),
        (dict(weights=str(short), in_channels=1), "RGB"),
        (dict(input_stats="cifar"), "inception"),
    ]
    for kwargs, needle in cases:
        with torch.device("meta"), pytest.raises(UserError, match=needle) as info:
            inception_resnet_v2(num_classes=5, **kwargs)
        assert "\n" not in str(info.value)


def test_input_stats_default_without_weights() -> None:
    with torch.device("meta"):
        scratch = create_model("inception_resnet_v2", num_classes=5)
        forced = create_model("inception_resnet_v2", num_classes=5, input_stats="imagenet")
        grey = inception_resnet_v2(num_classes=5, in_channels=1, input_stats="inception")
    assert scratch.input_stats == "dataset" and forced.input_stats == "imagenet"
    with pytest.raises(UserError, match="3-channel"):
        input_stats(grey, (0.5,), (0.2,))
