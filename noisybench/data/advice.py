"""Advice when the chosen model or augmentation does not fit the images (one warning line each).

The defaults are the BSD paper's CIFAR setting: PreAct ResNet-18 with the CIFAR stem (3x3,
stride 1, no max-pool) and a random crop padded by 4 pixels plus horizontal flips. On a user's
own data (``dataset=arrays``, ``dataset=folder``) they can be far off: measured on the 8x8
digits as an ``.npz`` (issue 25), PreAct ResNet-18 with 4-pixel padding took about 60 s per
epoch and reached 16.9 % after 3 epochs, where the small CNN with 1-pixel padding takes 0.2 s
per epoch and reaches 95 %. The run is not refused (the user may mean it); it says so once,
with the setting to change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["CIFAR_SIZED_MODELS", "auto_padding", "fit_advice"]

# Model configs whose networks are built for 32x32 inputs or larger (their first stage keeps
# the input's full resolution, or, for the ViT, patches of 16 pixels).
CIFAR_SIZED_MODELS = (
    "preact_resnet18",
    "preact_resnet18_dividemix",
    "resnet",
    "densenet",
    "wide_resnet",
    "vit_b16",
)


def auto_padding(image_size: Sequence[int]) -> int:
    """Crop padding sized to the images: an eighth of the shorter side, at least 1 pixel
    (CIFAR's 32 -> 4, the paper's value; 8x8 digits -> 1; Tiny ImageNet's 64 -> 8)."""
    return max(1, (min(int(s) for s in image_size) + 4) // 8)  # side / 8, rounded half up


def fit_advice(
    model: Mapping[str, Any],
    image_size: Sequence[int],
    augment: Mapping[str, Any] | None,
    *,
    streaming: bool = False,
) -> list[str]:
    """Warning lines for a model or augmentation that does not fit images of ``image_size``.

    Args:
        model: the ``model`` config (its ``name`` and, for the ResNets/DenseNets,
            ``imagenet_stem``).
        image_size: ``(H, W)`` of the images the network sees.
        augment: ``dataset.augment`` (``crop_padding`` an int or ``"auto"``).
        streaming: the images are streamed crops (``dataset=folder``), not arrays in memory.
    """
    lines: list[str] = []
    name = str(model.get("name", ""))
    side = min(int(s) for s in image_size)
    cifar_sized = name.startswith(CIFAR_SIZED_MODELS)
    size_text = "x".join(str(int(s)) for s in image_size)
    if cifar_sized and side < 24:
        lines.append(
            f"model={name} is built for 32x32 images or larger and these are {size_text}: "
            "it trains slowly and poorly on them; add model=small_cnn (or model=small_mlp) "
            "for images this small"
        )
    if cifar_sized and side >= 128 and not model.get("imagenet_stem", False):
        stem = (
            "model.imagenet_stem=true"
            if "imagenet_stem" in model
            else "e.g. model=resnet50 model.imagenet_stem=true"
        )
        lines.append(
            f"model={name} keeps the full {size_text} resolution in its first stage (the "
            f"CIFAR stem), about {(side // 32) ** 2}x the cost of a 32x32 image per step; use "
            f"{stem}, or smaller crops (dataset.reader.image_size)"
        )
    padding = (augment or {}).get("crop_padding", None)
    if not streaming and isinstance(padding, int) and padding > 0 and padding * 4 > side:
        lines.append(
            f"dataset.augment.crop_padding={padding} shifts {size_text} images by up to "
            f"{padding} pixels, more than a quarter of their side; use "
            f"dataset.augment.crop_padding=auto ({auto_padding(image_size)} here)"
        )
    return lines
