"""Defaults that fit the user's images: ``crop_padding: auto`` is an eighth of the image side
(the paper's 4 pixels on CIFAR's 32x32), and a model or crop that does not fit the images is
named in one warning line with the setting to change (``noisybench.data.advice``)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from noisybench.config import CONF_DIR
from noisybench.data.advice import auto_padding, fit_advice
from noisybench.data.views import build_views
from noisybench.errors import UserError

UNIT = ((0.5,), (0.25,))


@pytest.mark.parametrize(
    ("size", "padding"),
    # side / 8 rounded half up, at least 1 (worked out by hand)
    [((32, 32), 4), ((8, 8), 1), ((64, 64), 8), ((28, 20), 3), ((4, 4), 1), ((96, 96), 12)],
)
def test_auto_padding(size: tuple[int, int], padding: int) -> None:
    assert auto_padding(size) == padding
    view = build_views(["weak"], {"crop_padding": "auto", "hflip": False}, *UNIT, size)["weak"]
    assert view.crop_padding == padding


def test_arrays_config_sizes_its_crop_to_the_images() -> None:
    augment = OmegaConf.load(CONF_DIR / "dataset" / "arrays.yaml").augment
    assert augment.crop_padding == "auto"
    on_cifar = build_views(["weak"], augment, (0.5,) * 3, (0.25,) * 3, (32, 32))["weak"]
    on_digits = build_views(["weak"], augment, (0.5,) * 3, (0.25,) * 3, (8, 8))["weak"]
    assert (on_cifar.crop_padding, on_digits.crop_padding) == (4, 1)


def test_bad_padding_is_one_line() -> None:
    with pytest.raises(UserError, match=r"crop_padding=big is invalid.*auto"):
        build_views(["weak"], {"crop_padding": "big"}, *UNIT, (8, 8))


def test_cifar_network_on_small_images_is_named() -> None:
    lines = fit_advice({"name": "preact_resnet18"}, (8, 8), {"crop_padding": "auto"})
    assert len(lines) == 1
    assert "model=preact_resnet18" in lines[0] and "8x8" in lines[0]
    assert "model=small_cnn" in lines[0]


def test_cifar_padding_on_small_images_is_named() -> None:
    (line,) = fit_advice({"name": "small_cnn"}, (8, 8), {"crop_padding": 4})
    assert "crop_padding=4" in line and "crop_padding=auto (1 here)" in line


def test_cifar_stem_on_large_crops_is_named() -> None:
    (line,) = fit_advice(
        {"name": "resnet50", "imagenet_stem": False}, (224, 224), {}, streaming=True
    )
    assert "model.imagenet_stem=true" in line and "49x" in line  # (224 // 32) ** 2
    (line,) = fit_advice({"name": "preact_resnet18"}, (224, 224), {}, streaming=True)
    assert "model=resnet50 model.imagenet_stem=true" in line


@pytest.mark.parametrize(
    ("model", "size", "augment"),
    [
        ({"name": "preact_resnet18"}, (32, 32), {"crop_padding": 4}),  # the paper's setting
        ({"name": "small_cnn"}, (8, 8), {"crop_padding": 1}),  # the quickstart
        ({"name": "resnet50", "imagenet_stem": True}, (224, 224), {}),  # the ImageNet row
        ({"name": "resnet18"}, (64, 64), {"crop_padding": 4}),  # Tiny ImageNet
    ],
)
def test_fitting_settings_get_no_advice(model: dict, size: tuple[int, int], augment: dict) -> None:
    assert fit_advice(model, size, augment) == []


@pytest.mark.parametrize(("dataset", "key"), [("arrays", "path"), ("folder", "root")])
def test_a_value_only_the_user_can_give_is_asked_for_in_one_line(dataset: str, key: str) -> None:
    # was: a Hydra MissingMandatoryValue traceback from inside the run
    from noisybench.config import check_config, compose

    with pytest.raises(UserError, match=rf"dataset\.reader\.{key} must be set: add "):
        check_config(compose([f"dataset={dataset}"]))
