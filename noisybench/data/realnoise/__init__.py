"""Real-noise datasets read from their official layouts (see :mod:`.readers`), each with a
manifest and its SHA-256 (:mod:`.common`), exportable to the folder + label-file form
(:mod:`.export`, ``python -m noisybench.data.realnoise``)."""

from noisybench.data.realnoise.common import (
    MANIFEST_VERSION,
    RealNoiseData,
    balanced_subset,
    check_manifest,
    evaluation_splits,
    manifest_bytes,
    split_sizes,
    summary,
)
from noisybench.data.realnoise.readers import (
    load_animal10n,
    load_clothing1m,
    load_food101n,
    load_red_mini_imagenet,
    load_webvision_mini,
)

__all__ = [
    "MANIFEST_VERSION",
    "RealNoiseData",
    "balanced_subset",
    "check_manifest",
    "evaluation_splits",
    "load_animal10n",
    "load_clothing1m",
    "load_food101n",
    "load_red_mini_imagenet",
    "load_webvision_mini",
    "manifest_bytes",
    "split_sizes",
    "summary",
]
