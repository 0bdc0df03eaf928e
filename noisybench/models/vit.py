"""ViT-B/16 (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words", ICLR), built on
torchvision's ``VisionTransformer`` with a fresh classification head.

BSD paper, Appendix A.1: "The ViT-B model has been pretrained on ImageNet for all experiments
and is available in Pytorch"; Section 4 fine-tunes it for 40 epochs (Adam, 1cycle, max lr
5e-5) on CIFAR-10/100 and Tiny ImageNet. Reproducing those numbers therefore needs
``pretrained=True`` (torchvision's ``ViT_B_16_Weights.IMAGENET1K_V1``, downloaded into the
torch hub cache on first use).

Input size: the network only accepts ``image_size`` x ``image_size`` images (224 by default,
the resolution of the pretrained weights and of the paper's fine-tuning). The 32x32 / 64x64
dataset images must be upsampled to ``image_size`` by the data layer before they reach the
model; this module does not resize. A different ``image_size`` (a multiple of 16) is allowed:
the pretrained position embeddings are then interpolated to the new patch grid (bicubic, with
torchvision's ``interpolate_embeddings``).

Offline weights: ``weights=PATH`` (config ``model.weights``) loads the backbone from a local
file (a torchvision ``vit_b_16`` state dict, e.g. the ``vit_b_16-c867db91.pth`` file, or a
``{"state_dict": ...}`` checkpoint) instead of the torch hub download; a missing file or one
that does not fit the network is a one-line ``UserError``.

Input normalisation: ImageNet-pretrained weights expect images normalised with ImageNet's
mean and std, not the dataset's. ``input_stats`` (``"auto"`` by default: ImageNet statistics
when ``pretrained`` or ``weights`` is set, the dataset's otherwise; or ``"imagenet"`` /
``"dataset"``) is kept on the model as :attr:`ViTB16.input_stats` and read by the data layer
(:func:`noisybench.data.views.input_stats`).

Head: the pretrained 1000-way head is dropped and a zero-initialised ``768 -> K`` linear layer
is attached, as the ViT paper does for fine-tuning (Section 3.2).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import vision_transformer as tv_vit

from noisybench.errors import UserError
from noisybench.models._common import check_input_stats, check_sizes, load_into, load_weights

__all__ = ["ViTB16", "vit_b16"]

PATCH = 16
HIDDEN = 768
PRETRAINED_SIZE = 224
WEIGHTS = tv_vit.ViT_B_16_Weights.IMAGENET1K_V1


def weights_path() -> Path:
    """Where torch hub caches the ImageNet ViT-B/16 weights (and where to put them offline)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(WEIGHTS.url)


def _fetch_imagenet_state() -> dict[str, Tensor]:
    """The ImageNet-1k ViT-B/16 state dict from the torch hub cache, downloading if needed."""
    try:
        return torch.hub.load_state_dict_from_url(
            WEIGHTS.url, progress=False, check_hash=True, map_location="cpu", weights_only=True
        )
    except Exception as err:  # network, HTTP, hash or file errors all mean "no weights"
        raise UserError(
            f"vit_b16: could not fetch the pretrained ImageNet weights ({type(err).__name__}: "
            f"{err}); download {WEIGHTS.url} and place it at {weights_path()} "
            f"(the torch hub cache, see TORCH_HOME), or set model.pretrained=false"
        ) from err


class ViTB16(nn.Module):
    """torchvision ViT-B/16 backbone (class-token output after the final LayerNorm) and a
    linear head.

    Args:
        num_classes: number of logits.
        in_channels: input channels (3 for pretrained weights; otherwise the patch embedding
            is created fresh for the given channel count).
        image_size: side of the (square) input images, a multiple of 16.
        pretrained: load torchvision's ImageNet-1k weights (everything but the head).
        weights: path of a local weights file to load instead of downloading (implies
            pretrained weights).
        input_stats: ``"auto"``, ``"imagenet"`` or ``"dataset"`` normalisation of the input.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = PRETRAINED_SIZE,
        pretrained: bool = False,
        weights: str | None = None,
        input_stats: str = "auto",
    ) -> None:
        super().__init__()
        self.backbone = tv_vit.vit_b_16(weights=None, image_size=image_size)
        self.backbone.heads = nn.Identity()
        if in_channels != 3:
            proj = nn.Conv2d(in_channels, HIDDEN, PATCH, stride=PATCH)
            # Same scheme as the original projection: truncated normal, std sqrt(1 / fan_in).
            nn.init.trunc_normal_(proj.weight, std=(1.0 / (in_channels * PATCH * PATCH)) ** 0.5)
            nn.init.zeros_(proj.bias)
            self.backbone.conv_proj = proj
        if pretrained or weights is not None:
            state = load_weights("vit_b16", weights) if weights else _fetch_imagenet_state()
            state = {k: v for k, v in state.items() if not k.startswith("heads.")}
            pos = state.get("encoder.pos_embedding")
            grid = (image_size // PATCH) ** 2 + 1
            if isinstance(pos, Tensor) and pos.dim() == 3 and pos.shape[1] != grid:
                try:
                    state = dict(tv_vit.interpolate_embeddings(image_size, PATCH, state))
                except Exception as err:
                    raise UserError(
                        f"vit_b16: the position embedding in {weights or WEIGHTS.url} cannot be "
                        f"resized to image_size={image_size} ({type(err).__name__})"
                    ) from err
            load_into("vit_b16", self.backbone, state, str(weights or WEIGHTS.url))
        pretrained_input = bool(pretrained) or weights is not None
        if input_stats == "auto":
            input_stats = "imagenet" if pretrained_input else "dataset"
        self.input_stats = input_stats
        self.image_size = image_size
        self.num_features = HIDDEN
        self.head = nn.Linear(HIDDEN, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """Class-token features ``(N, 768)``; ``x`` must be ``image_size`` pixels square."""
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def vit_b16(
    num_classes: int,
    in_channels: int = 3,
    image_size: int = PRETRAINED_SIZE,
    pretrained: bool = False,
    weights: str | None = None,
    input_stats: str = "auto",
) -> ViTB16:
    """ViT-B/16 with a new K-way head (BSD paper, Section 4; pretrained there).

    Raises:
        UserError: image size not a positive multiple of 16, pretrained weights requested with
            ``in_channels != 3``, or the weights could not be fetched.
    """
    check_sizes("vit_b16", num_classes, in_channels)
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, int)
        or image_size < PATCH
        or image_size % PATCH
    ):
        raise UserError(f"vit_b16: image_size must be a multiple of {PATCH}, got {image_size!r}")
    check_input_stats("vit_b16", input_stats)
    if (pretrained or weights is not None) and in_channels != 3:
        raise UserError(
            f"vit_b16: the pretrained weights expect 3 input channels, got in_channels="
            f"{in_channels}; use RGB images or set model.pretrained=false"
        )
    return ViTB16(num_classes, in_channels, image_size, bool(pretrained), weights, input_stats)
