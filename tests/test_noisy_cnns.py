"""Parameter counts of the baselines' own networks against their authors' model code.

Co-teaching's CNN is transcribed here from bhanML/Co-teaching ``model.py`` (PyTorch) and
counted; SCE's two Keras networks (YisenWang/symmetric_cross_entropy_for_noisy_labels
``models.py`` and ``resnet.py``) are counted by hand, layer by layer, from their definitions:
``Conv2D(f, (3, 3))`` has ``9 * c_in * f + f`` weights (Keras convolutions keep their bias),
``Dense(u)`` ``n_in * u + u``, ``BatchNormalization`` 2 trainable (gamma, beta) + 2
non-trainable (moving mean / variance) per channel; PyTorch counts only the trainable ones
as parameters (the moving statistics are buffers).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from noisybench.models import create_model


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class CodeCNN(nn.Module):
    """bhanML/Co-teaching model.py ``CNN`` (input_channel=3, dropout 0.25, top_bn False)."""

    def __init__(self, input_channel: int = 3, n_outputs: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(input_channel, 128, kernel_size=3, stride=1, padding=1)
        self.c2 = nn.Conv2d(128, 128, kernel_size=3, stride=1, padding=1)
        self.c3 = nn.Conv2d(128, 128, kernel_size=3, stride=1, padding=1)
        self.c4 = nn.Conv2d(128, 256, kernel_size=3, stride=1, padding=1)
        self.c5 = nn.Conv2d(256, 256, kernel_size=3, stride=1, padding=1)
        self.c6 = nn.Conv2d(256, 256, kernel_size=3, stride=1, padding=1)
        self.c7 = nn.Conv2d(256, 512, kernel_size=3, stride=1, padding=0)
        self.c8 = nn.Conv2d(512, 256, kernel_size=3, stride=1, padding=0)
        self.c9 = nn.Conv2d(256, 128, kernel_size=3, stride=1, padding=0)
        self.l_c1 = nn.Linear(128, n_outputs)
        self.bn1 = nn.BatchNorm2d(128)
        self.bn2 = nn.BatchNorm2d(128)
        self.bn3 = nn.BatchNorm2d(128)
        self.bn4 = nn.BatchNorm2d(256)
        self.bn5 = nn.BatchNorm2d(256)
        self.bn6 = nn.BatchNorm2d(256)
        self.bn7 = nn.BatchNorm2d(512)
        self.bn8 = nn.BatchNorm2d(256)
        self.bn9 = nn.BatchNorm2d(128)

    def forward(self, x):  # eval mode here: the code's dropout2d also runs at eval, skipped
        h = x
        for i in range(1, 10):
            h = getattr(self, f"c{i}")(h)
            h = F.leaky_relu(getattr(self, f"bn{i}")(h), negative_slope=0.01)
            if i in (3, 6):
                h = F.max_pool2d(h, kernel_size=2, stride=2)
        h = F.avg_pool2d(h, kernel_size=h.shape[2])
        return self.l_c1(h.view(h.size(0), h.size(1)))


@pytest.mark.parametrize("k", [10, 100])
def test_coteaching_cnn_has_the_codes_parameters_and_function(k: int) -> None:
    ours = create_model("coteaching_cnn", num_classes=k)
    code = CodeCNN(3, k)
    assert n_params(ours) == n_params(code)
    assert n_params(create_model("coteaching_cnn", num_classes=10)) == 4_434_570
    # same function: copy the code's weights in layer order, compare logits in eval mode
    ours.eval()
    code.eval()
    with torch.no_grad():
        src = [p for name, p in code.named_parameters() if name.startswith("c")]
        dst = [p for conv in ours.convs for p in conv.parameters()]
        for a, b in zip(dst, src, strict=True):
            a.copy_(b)
        ours.head.weight.copy_(code.l_c1.weight)
        ours.head.bias.copy_(code.l_c1.bias)
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(ours(x), code(x))


def _conv(cin: int, f: int, k: int = 3) -> int:
    return k * k * cin * f + f


def _bn(c: int) -> tuple[int, int]:
    return 2 * c, 2 * c  # trainable, non-trainable


def test_sce_cnn8_count_by_hand_from_models_py() -> None:
    k = 10
    convs = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 196), (196, 196)]
    trainable = sum(_conv(a, b) + _bn(b)[0] for a, b in convs)
    moving = sum(_bn(b)[1] for _, b in convs) + _bn(256)[1]
    trainable += (4 * 4 * 196) * 256 + 256 + _bn(256)[0]  # fc1 on the flattened 4x4x196
    trainable += 256 * k + k
    assert n_params(create_model("sce_cnn8", num_classes=k)) == trainable == 1_639_794
    assert trainable + moving == 1_641_858  # Keras's "Total params"


@pytest.mark.parametrize("k", [10, 100])
def test_sce_resnet44_count_by_hand_from_resnet_py(k: int) -> None:
    depth = 7  # cifar10_resnet(depth=7, ...) for cifar-100 in models.py
    total = _conv(3, 16) + _bn(16)[0]  # stem conv + BN
    cin = 16
    for filters in (16, 32, 64):
        for i in range(depth):
            first = filters == 16 and i == 0
            if not first:
                total += _bn(cin)[0]  # pre-activation BN on the block's input
            total += _conv(cin, filters) + _bn(filters)[0] + _conv(filters, filters)
            if cin != filters:
                total += _conv(cin, filters, k=1)  # 1x1 shortcut, biased
            cin = filters
    total += _bn(64)[0] + 64 * k + k
    assert n_params(create_model("sce_resnet44", num_classes=k)) == total
    assert total == {10: 662_826, 100: 668_676}[k]
