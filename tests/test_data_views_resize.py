"""``dataset.augment.resize``: every view resized on the device after augmentation.

The expected images come from a bilinear interpolation written here (align_corners=False,
in float64) and from ``torch.nn.functional.interpolate`` applied to the un-resized view drawn
with the same seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from noisybench.data.loader import DeviceLoader
from noisybench.data.views import AugmentParams, build_views
from noisybench.errors import UserError

CONF = Path(__file__).resolve().parents[1] / "conf"
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _images(b: int, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)


def _bilinear_axis(x: np.ndarray, out: int, axis: int) -> np.ndarray:
    """Upsample one axis: source coordinate (o + 0.5) * in / out - 0.5, clamped at 0, and a
    linear blend of the two neighbouring pixels (the last pixel repeats at the border)."""
    n = x.shape[axis]
    src = np.maximum((np.arange(out) + 0.5) * n / out - 0.5, 0.0)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    frac = src - lo
    shape = [1] * x.ndim
    shape[axis] = out
    frac = frac.reshape(shape)
    return np.take(x, lo, axis=axis) * (1 - frac) + np.take(x, hi, axis=axis) * frac


def _hand_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    arr = x.double().numpy()
    arr = _bilinear_axis(_bilinear_axis(arr, size, 2), size, 3)
    return torch.from_numpy(arr)


@pytest.mark.parametrize("kind", ["plain", "weak", "strong"])
def test_resize_equals_interpolating_the_same_augmented_batch(kind):
    x = _images(5)
    base = build_views([kind], {}, MEAN, STD, (8, 8))[kind]
    big = build_views([kind], {"resize": 20}, MEAN, STD, (8, 8))[kind]
    torch.manual_seed(4)
    small = base(x)
    torch.manual_seed(4)
    out = big(x)
    assert out.shape == (5, 3, 20, 20) and out.dtype == torch.float32
    ref = F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False)
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(out.double(), _hand_resize(small, 20), atol=1e-4)


def test_plain_resize_by_hand_from_raw_pixels():
    """Normalise-then-resize equals resize-then-normalise (bilinear weights sum to 1)."""
    x = _images(2, 6, 6)
    out = build_views(["plain"], {"resize": 14}, MEAN, STD, (6, 6))["plain"](x)
    raw = _hand_resize(x.double() / 255.0, 14)
    mean = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    assert torch.allclose(out.double(), (raw - mean) / std, atol=1e-5)
    # A corner pixel of an upsampled image is the corner pixel of the input.
    assert out[1, 2, 0, 0].item() == pytest.approx((x[1, 2, 0, 0].item() / 255 - 0.6) / 0.3)


def test_downsizing_is_antialiased_and_same_size_is_identity():
    x = _images(3, 12, 12)
    plain = build_views(["plain"], {}, MEAN, STD, (12, 12))["plain"](x)
    down = build_views(["plain"], {"resize": 5}, MEAN, STD, (12, 12))["plain"](x)
    ref = F.interpolate(plain, size=(5, 5), mode="bilinear", align_corners=False, antialias=True)
    assert down.shape == (3, 3, 5, 5) and torch.allclose(down, ref, atol=1e-5)
    same = build_views(["plain"], {"resize": 12}, MEAN, STD, (12, 12))["plain"](x)
    assert torch.equal(same, plain)


def test_loader_batches_have_the_resized_shape():
    views = build_views(["weak", "strong_1"], {"resize": 16}, MEAN, STD, (8, 8))
    loader = DeviceLoader(_images(10), torch.arange(10) % 3, 4, views, seed=0)
    batch = next(iter(loader))
    assert {k: tuple(v.shape) for k, v in batch.views.items()} == {
        "weak": (4, 3, 16, 16),
        "strong_1": (4, 3, 16, 16),
    }


@pytest.mark.parametrize("bad", [0, -3, 2.5, "224", True, [224, 224]])
def test_invalid_resize_raises_user_error(bad):
    with pytest.raises(UserError, match="resize"):
        build_views(["plain"], {"resize": bad}, MEAN, STD, (8, 8))


def test_unknown_key_still_raises():
    with pytest.raises(UserError, match="resise"):
        AugmentParams.from_mapping({"resise": 224})


def test_dataset_configs_declare_resize_null():
    for name in ("cifar10", "cifar100", "digits", "tinyimagenet"):
        cfg = OmegaConf.load(CONF / "dataset" / f"{name}.yaml")
        assert "resize" in cfg.augment and cfg.augment.resize is None
        assert AugmentParams.from_mapping(cfg.augment).resize is None


def test_vit_presets_compose():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose("config", overrides=["experiment=table1_vit", "method=ce"])
        assert cfg.model.name == "vit_b16" and cfg.model.pretrained is True
        assert cfg.dataset.augment.resize == 224 == cfg.model.image_size
        assert cfg.optim.name == "adam_onecycle" and cfg.optim.optimizer.lr == 5e-5
        assert (cfg.epochs, cfg.batch_size, cfg.method.name) == (40, 256, "ce")
        cfg = compose("config", overrides=["experiment=table1_vit_bsd", "dataset=cifar100"])
        assert (cfg.method.name, cfg.method.c, cfg.method.gamma) == ("bsd", 50.0, 0.95)
        assert cfg.dataset.name == "cifar100" and cfg.dataset.augment.resize == 224
        assert (cfg.epochs, cfg.optim.optimizer.lr, cfg.model.name) == (40, 5e-5, "vit_b16")
