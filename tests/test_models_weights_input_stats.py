"""model.weights (offline weights file) and ImageNet input statistics for pretrained models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from noisybench.data.views import build_views, input_stats
from noisybench.errors import UserError
from noisybench.models.vit import vit_b16

DATA_MEAN, DATA_STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def _tiny_state_file(tmp_path, model: nn.Module, shift: float = 0.0):
    """Each tensor of the state dict is the constant (its position + shift), stored as a
    1-element storage expanded to the full shape, so even ViT-B's file is a few kilobytes."""
    state = {
        k: torch.full((), float(i) + shift, dtype=v.dtype).expand(v.shape)
        for i, (k, v) in enumerate(model.state_dict().items())
    }
    path = tmp_path / "vit.pth"
    torch.save(state, path)
    return path, state


def test_vit_loads_a_local_weights_file_and_uses_imagenet_stats(tmp_path) -> None:
    with torch.device("meta"):
        ref = vit_b16(num_classes=10, image_size=16).backbone
    path, state = _tiny_state_file(tmp_path, ref)
    assert path.stat().st_size < 200_000
    model = vit_b16(num_classes=10, image_size=16, weights=str(path))
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, state[k].to(v.dtype)), k
    assert torch.count_nonzero(model.head.weight) == 0  # new zero head (ViT paper 3.2)
    mean, std = input_stats(model, DATA_MEAN, DATA_STD)
    assert mean == (0.485, 0.456, 0.406) and std == (0.229, 0.224, 0.225)
    # the plain view then normalises with ImageNet's statistics
    x = torch.full((1, 3, 4, 4), 255, dtype=torch.uint8)
    plain = build_views(["plain"], {}, mean, std, 4)["plain"]
    expected = torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    torch.testing.assert_close(plain(x)[0, :, 0, 0], expected)


def test_input_stats_default_to_the_dataset_for_scratch_models() -> None:
    with torch.device("meta"):
        scratch = vit_b16(num_classes=10, image_size=16)
        forced = vit_b16(num_classes=10, image_size=16, input_stats="imagenet")
    assert input_stats(scratch, DATA_MEAN, DATA_STD) == (DATA_MEAN, DATA_STD)
    assert input_stats(nn.Linear(2, 2), DATA_MEAN, DATA_STD) == (DATA_MEAN, DATA_STD)
    assert input_stats(forced, DATA_MEAN, DATA_STD)[0] == (0.485, 0.456, 0.406)
    with pytest.raises(UserError, match="3-channel"):
        input_stats(forced, (0.5,), (0.2,))
    with pytest.raises(UserError, match="input_stats='cifar'"):
        vit_b16(num_classes=10, image_size=16, input_stats="cifar")


def test_weights_errors_are_one_line(tmp_path) -> None:
    with torch.device("meta"), pytest.raises(UserError) as info:
        vit_b16(num_classes=10, image_size=16, weights=str(tmp_path / "missing.pth"))
    assert "does not exist" in str(info.value) and "\n" not in str(info.value)
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"not a torch file")
    with torch.device("meta"), pytest.raises(UserError, match="cannot read") as info:
        vit_b16(num_classes=10, image_size=16, weights=str(bad))
    assert "\n" not in str(info.value)
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with torch.device("meta"), pytest.raises(UserError, match="do not fit") as info:
        vit_b16(num_classes=10, image_size=16, weights=str(wrong))
    assert "\n" not in str(info.value)
