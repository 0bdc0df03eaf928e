"""Streaming image-folder data (ImageNet and any user's dataset in the ImageFolder layout).

Layout: ``root/train/<class>/<image>`` and ``root/val/<class>/<image>`` (``.jpeg``, ``.jpg``,
``.png``, any case). Sample indices are stable: classes are the sorted sub-folder names of
``train`` (index = position), samples are the class's files in sorted order, classes in
class order, so sample ``i`` is the same file in every run and per-sample method state
(BSD's targets, PS-KD, TE) stays attached to it. ``val`` must use the same class names.

Unlike the CIFAR-style readers, images are not held in memory: they are decoded and
augmented in :class:`torch.utils.data.DataLoader` worker processes on the CPU (standard
ImageNet recipe: ``RandomResizedCrop(224)`` + horizontal flip for training, ``Resize(256)`` +
``CenterCrop(224)`` for evaluation, on uint8 tensors), and only the uint8 ``(B, 3, 224, 224)``
batch is sent to the device, where it is converted to float and normalised.

:class:`FolderLoader` yields the same :class:`noisybench.method.Batch` objects as
:class:`noisybench.data.loader.DeviceLoader`, with the same ``epoch(epoch, start_step)`` and
``len()``: the epoch's order is ``randperm`` from ``(seed, epoch)`` only, and each sample's
augmentation draws from a generator seeded by ``(seed, epoch, index)``, so a resumed run sees
exactly the same pixels whatever the number of workers. ``rank`` / ``world_size`` split every
global batch into disjoint contiguous shares (one per process), so data-parallel training
later needs no other change. The views streamed are ``"weak"`` (and ``"weak_<j>"``, further
independent draws: the ensemble's members, DivideMix's two views) and ``"plain"``; BSD+'s
strong views and DLB's carried batches are refused with a one-line error (not streamed).

Decoding: ``decoder="torchvision"`` (default; ``torchvision.io.decode_image``) or ``"pil"``
(PIL, then a uint8 tensor); ``benchmarks/bench_folder.py`` measures both (torchvision: 744
images/s, PIL: 647, torchvision's standard ImageFolder + PIL pipeline: 630, 2 workers, quiet).
``decode_device="cuda"`` decodes JPEGs on the GPU in the main process
(``torchvision.io.decode_jpeg(device="cuda")``; workers only read the bytes); it is
optional and untested here (no GPU).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from noisybench.data.labels_file import read_label_file
from noisybench.data.loader import (
    check_plan,
    check_start_step,
    epoch_generator_seed,
    folds_last_batch,
    planned_steps,
    process_share,
)
from noisybench.errors import UserError
from noisybench.method import Batch, EpochPlan

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FolderData",
    "FolderLoader",
    "eval_batches",
    "load_folder",
    "scan_split",
]

# torchvision 0.29 deprecates its image decoders in favour of TorchCodec (not installed here);
# they still work and are the faster CPU decoder (benchmarks/results/folder_reader.json).
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding capabilities of TorchVision"
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DECODERS = ("pil", "torchvision")
STREAMED_VIEWS = ("weak", "plain")  # and "weak_<j>": another independent weak draw


def _view_number(view: str) -> int | None:
    """0 for ``weak``, ``j`` for ``weak_<j>`` (j >= 1; the ensemble's and DivideMix's extra
    draws), None for ``plain`` or anything else."""
    if view == "weak":
        return 0
    head, _, tail = view.partition("_")
    if head == "weak" and tail.isdigit() and int(tail) >= 1:
        return int(tail)
    return None


@dataclass
class FolderData:
    """A streamed image-folder dataset: file lists and labels, no pixels.

    Attributes:
        name: dataset name.
        train_files / test_files: image paths in stable sample order.
        train_labels: int64 ``(N,)`` clean labels (the folder's class unless told otherwise).
        test_labels: int64 ``(M,)``.
        num_classes, class_names: K and the sorted class folder names.
        mean, std: normalisation constants in [0, 1] units.
        given_labels, clean_known: as in :class:`noisybench.data.base.ImageData`.
        image_size, resize: training/eval crop side (224) and eval resize side (256).
    """

    name: str
    train_files: list[str]
    train_labels: Tensor
    test_files: list[str]
    test_labels: Tensor
    num_classes: int
    class_names: list[str]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    given_labels: Tensor | None = None
    clean_known: bool = True
    image_size: int = 224
    resize: int = 256
    superclass: Tensor | None = None
    streaming: bool = True


def scan_split(
    split_dir: Path, classes: Sequence[str] | None = None
) -> tuple[list[str], list[int], list[str]]:
    """``(files, labels, class_names)`` of one split folder, in stable order (the scan of
    :func:`noisybench.data.fingerprint.scan_folder`, which refuses what cannot be an image).

    With ``classes`` given (the training classes), every sub-folder must be one of them.
    """
    import hashlib

    from noisybench.data.fingerprint import FolderScan, _scan_split

    return _scan_split(
        Path(split_dir), classes, hashlib.sha256(), "split", FolderScan([], [], [], [], [])
    )


def load_folder(  # noqa: PLR0913
    root: str,
    train: str = "train",
    val: str = "val",
    name: str = "folder",
    folder_labels: str = "clean",
    noisy_labels: str | None = None,
    clean_labels: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    image_size: int = 224,
    resize: int = 256,
    fingerprint: str | None = None,
) -> FolderData:
    """Scan ``root/train`` and ``root/val`` (see the module docstring).

    Args:
        folder_labels: ``"clean"``: the class folders are the clean labels (synthetic noise
            is applied, or ``noisy_labels`` gives the real noisy ones); ``"noisy"``: the
            class folders are the given noisy labels (real-noise data such as web images),
            with ``clean_labels`` the clean ones when known.
        noisy_labels / clean_labels: label files (``.npy`` or one integer per line) in the
            training samples' stable order.
        mean, std: normalisation (default ImageNet's).
        fingerprint: the digest of the data the run was trained on
            (:mod:`noisybench.data.fingerprint`); other data is refused. None: not checked.
    """
    if folder_labels not in ("clean", "noisy"):
        raise UserError(
            f"dataset.reader.folder_labels={folder_labels!r} must be 'clean' or 'noisy'"
        )
    from noisybench.data.fingerprint import (
        data_fingerprint,
        refuse_other_data,
        scan_folder,
    )

    scan = scan_folder(root, train, val)  # refuses what cannot be an image (cached per process)
    if fingerprint is not None:
        now = data_fingerprint(
            {
                "_target_": "noisybench.data.folder.load_folder",
                "root": root,
                "train": train,
                "val": val,
                "noisy_labels": noisy_labels,
                "clean_labels": clean_labels,
            }
        )
        refuse_other_data(fingerprint, now, f"dataset.reader.root={root}")
    if scan.skipped:
        import logging

        logging.getLogger("noisybench").warning(
            "image folder %s: %d files skipped (hidden or without an image suffix, e.g. %s)",
            root,
            scan.skipped,
            ", ".join(scan.skipped_examples),
        )
    train_files, train_y, classes = list(scan.train_files), scan.train_labels, scan.classes
    test_files, test_y = list(scan.test_files), scan.test_labels
    k = len(classes)
    folder = torch.tensor(train_y, dtype=torch.long)
    given: Tensor | None = None
    clean_known = True
    if folder_labels == "clean":
        clean = folder
        if clean_labels is not None:
            raise UserError(
                "dataset.reader.clean_labels is only for folder_labels=noisy (the folders are "
                "the clean labels here); drop it"
            )
        if noisy_labels is not None:
            given = read_label_file(
                noisy_labels, len(train_files), k, "dataset.reader.noisy_labels"
            )
    else:
        if noisy_labels is not None:
            raise UserError(
                "dataset.reader.noisy_labels is only for folder_labels=clean (the folders are "
                "the noisy labels here); drop it"
            )
        given = folder
        if clean_labels is not None:
            clean = read_label_file(
                clean_labels, len(train_files), k, "dataset.reader.clean_labels"
            )
        else:
            clean, clean_known = folder.clone(), False
    if int(image_size) < 1 or int(resize) < int(image_size):
        raise UserError(
            f"dataset image_size={image_size} / resize={resize}: need 1 <= image_size <= resize"
        )
    return FolderData(
        name=name,
        train_files=train_files,
        train_labels=clean,
        test_files=test_files,
        test_labels=torch.tensor(test_y, dtype=torch.long),
        num_classes=k,
        class_names=classes,
        mean=tuple(float(v) for v in (mean or IMAGENET_MEAN)),
        std=tuple(float(v) for v in (std or IMAGENET_STD)),
        given_labels=given,
        clean_known=clean_known,
        image_size=int(image_size),
        resize=int(resize),
    )


# ----------------------------------------------------------------------------- decoding
MAX_PIXELS = 89_478_485
"""Largest image decoded (width x height; PIL's own default limit, about 0.27 GB as RGB): a
larger one is refused before decoding, whatever the decoder (a "decompression bomb": a small
file that decodes to gigabytes)."""


class DecodeError(Exception):
    """An image that cannot be decoded; carries the file's name to the training process."""


def _image_size(path: str) -> tuple[int, int]:
    """Width and height from the file's header (PIL reads the header only, no pixels)."""
    from PIL import Image

    # PIL's own check would refuse (above twice its limit) without the size; this one is ours.
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as img:
            return img.size
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _to_uint8(image: Tensor) -> Tensor:
    """8-bit pixels from a 16-bit decode, as PIL converts 16-bit RGB PNGs: the high byte
    (``value >> 8``; 65535 -> 255, 257 -> 1, 256 -> 1, 255 -> 0)."""
    if image.dtype == torch.uint8:
        return image
    if image.dtype in (torch.uint16, torch.int32, torch.int64):
        return (image.to(torch.int32) >> 8).clamp(0, 255).to(torch.uint8)
    raise DecodeError(f"decodes to {image.dtype} pixels, not 8- or 16-bit")


def decode_file(path: str, decoder: str) -> Tensor:
    """uint8 ``(3, H, W)`` RGB image from ``path`` with PIL or torchvision.io.

    Both decoders give the same pixels for 8- and 16-bit images (16-bit: the high byte, see
    :func:`_to_uint8`; PIL's own grey-16 conversion would clip every value above 255 to white).
    Raises :class:`DecodeError` (naming the reason) for a file that is not a decodable image
    or has more than :data:`MAX_PIXELS` pixels."""
    try:
        width, height = _image_size(path)
        if width * height > MAX_PIXELS:
            raise DecodeError(
                f"has {width} x {height} pixels, more than the limit of {MAX_PIXELS:,} "
                "(a decompression bomb, or an image to downscale first)"
            )
        if decoder == "pil":
            from PIL import Image

            with Image.open(path) as img:
                if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit grey
                    grey = _to_uint8(torch.from_numpy(np.asarray(img).astype(np.int32)))
                    return grey.unsqueeze(0).expand(3, -1, -1).contiguous()
                arr = np.asarray(img.convert("RGB"))
            return torch.from_numpy(arr.copy()).permute(2, 0, 1)
        from torchvision.io import ImageReadMode, decode_image, read_file

        return _to_uint8(decode_image(read_file(path), mode=ImageReadMode.RGB))
    except DecodeError:
        raise
    except FileNotFoundError:
        raise DecodeError("was removed while the run was reading it") from None
    except Exception as err:  # truncated, random bytes, text named .jpg, unsupported format
        detail = " ".join(str(err).split())[:120] or type(err).__name__
        raise DecodeError(f"is not a decodable image ({type(err).__name__}: {detail})") from None


@dataclass
class _Failed:
    """What a worker returns for a file it could not read (an exception raised in a worker
    would reach the training process as a traceback without the file's name)."""

    path: str
    reason: str

    def error(self) -> UserError:
        from noisybench.data.fingerprint import show_path

        return UserError(
            f"image {show_path(self.path)} {self.reason}; remove or replace it (or fix the "
            "folder) and run the same command again: the run resumes from its last checkpoint"
        )


def _train_transform(size: int):
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])


def _eval_transform(size: int, resize: int):
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(size)])


class _Images(Dataset):
    """Items are ``(epoch, index)``; returns ``(uint8 image, index)``.

    Training items re-seed torch's generator of the worker from ``(seed, epoch, index)``
    before the random transform, so the pixels do not depend on the worker or its history.
    With ``raw_bytes`` the item is the file's bytes (GPU decoding in the main process).
    """

    def __init__(
        self,
        files: Sequence[str],
        transform,
        decoder: str,
        seed: int | None,
        raw_bytes: bool,
        view_number: int = 0,
    ) -> None:
        self.files = list(files)
        self.transform = transform
        self.decoder = decoder
        self.seed = seed
        self.raw_bytes = raw_bytes
        self.view_number = view_number

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]) -> tuple[Tensor, int]:
        epoch, index = item
        path = self.files[index]
        try:
            if self.raw_bytes:
                from torchvision.io import read_file

                return read_file(path), index
            image = decode_file(path, self.decoder)
        except DecodeError as err:
            return _Failed(path, str(err)), index  # type: ignore[return-value]
        except OSError as err:
            return _Failed(path, f"cannot be read ({err.strerror})"), index  # type: ignore[return-value]
        if self.seed is None:
            return self.transform(image), index
        # A private RNG state: with workers=0 this runs in the training process, whose global
        # generator (checkpointed for exact resume) must not be disturbed.
        with _private_rng():
            torch.manual_seed(sample_seed(self.seed, epoch, index, self.view_number))
            return self.transform(image), index


def _private_rng():
    """Every global generator saved and restored around the block: ``torch.manual_seed``
    reseeds the CUDA generators too, so in a process that uses CUDA (workers=0, GPU decoding)
    their states are restored as well, not only the CPU one."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else [])


def _own_generator() -> torch.Generator:
    """A generator of the DataLoader's own: each new iterator draws its workers' base seed
    from it, which would otherwise come from the global generator, shifting the training
    process's random stream at every epoch start (and differently after a mid-epoch resume).
    The pixels do not depend on it (per-sample seeds)."""
    gen = torch.Generator()
    gen.manual_seed(0)
    return gen


def sample_seed(seed: int, epoch: int, index: int, view_number: int = 0) -> int:
    """Augmentation seed of one sample in one epoch (a hash of the numbers; view ``weak_<j>``
    mixes in ``j``, so a method's second weak view is an independent draw)."""
    entropy = [int(seed), int(epoch), int(index)] + ([int(view_number)] if view_number else [])
    state = np.random.SeedSequence(entropy).generate_state(2)
    return ((int(state[0]) << 32) | int(state[1])) & ((1 << 63) - 1)


def _collate(items: list[tuple[Tensor, int]]) -> tuple[object, Tensor]:
    images = [img for img, _ in items]
    idx = torch.tensor([i for _, i in items], dtype=torch.long)
    failed = next((img for img in images if isinstance(img, _Failed)), None)
    if failed is not None:
        return failed, idx  # raised as one line by the training process (_checked)
    if images and images[0].dim() == 1:  # raw bytes for GPU decoding
        return images, idx
    return torch.stack(images), idx


def _checked(batch: tuple[object, Tensor]) -> tuple[object, Tensor]:
    """A collated batch, or the one-line error naming the file a worker could not read."""
    if isinstance(batch[0], _Failed):
        raise batch[0].error()
    return batch


def _normaliser(mean: Sequence[float], std: Sequence[float], device: torch.device):
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
    s = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0

    def normalise(images: Tensor) -> Tensor:
        return (images.to(device, non_blocking=True).float() - m) / s

    return normalise


def _gpu_decode(raw: list[Tensor], transform, device: torch.device, seeds: list[int]) -> Tensor:
    """Decode a list of JPEG byte tensors on the GPU and transform them one by one there."""
    from torchvision.io import ImageReadMode, decode_jpeg

    decoded = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
    out = []
    with _private_rng():
        for image, seed in zip(decoded, seeds, strict=True):
            if seed >= 0:
                torch.manual_seed(seed)
            out.append(transform(image))
    return torch.stack(out)


def _check_common(decoder: str, decode_device: str | None, workers: int) -> None:
    if decoder not in DECODERS:
        raise UserError(f"dataset decoder={decoder!r} is unknown; use one of {list(DECODERS)}")
    if decode_device not in (None, "cpu", "cuda"):
        raise UserError(f"dataset decode_device={decode_device!r} must be null, 'cpu' or 'cuda'")
    if decode_device == "cuda" and not torch.cuda.is_available():
        raise UserError("dataset decode_device=cuda needs a CUDA GPU; use decode_device=null")
    if int(workers) < 0:
        raise UserError(f"dataset workers={workers} must be >= 0 (0 decodes in the main process)")


class FolderLoader:
    """Mini-batches of a streamed image folder (same interface as ``DeviceLoader``).

    Args:
        data: :class:`FolderData`.
        labels: int64 ``(N,)`` given (noisy) labels, on the training device.
        batch_size: GLOBAL batch size (all processes together); each of the ``world_size``
            processes gets a contiguous share of every global batch (sizes differ by at most 1).
        views: the method's view names; only ``"weak"`` (RandomResizedCrop + flip) and
            ``"plain"`` (resize + centre crop) are streamed.
        seed: base seed of the epoch permutations and augmentations (>= 0).
        device: where batches are delivered (normalised float32).
        workers: DataLoader worker processes (0 = main process).
        drop_last, carry_previous: as in ``DeviceLoader`` (``carry_previous`` must be 0).
        rank, world_size: this process's share (``0 <= rank < world_size``).
        decoder: ``"pil"`` or ``"torchvision"``; decode_device: ``"cuda"`` for GPU decoding.
        prefetch_factor: batches each worker prepares ahead.
    """

    def __init__(  # noqa: PLR0913
        self,
        data: FolderData,
        labels: Tensor,
        batch_size: int,
        views: Sequence[str],
        seed: int,
        device: torch.device | str = "cpu",
        workers: int = 4,
        drop_last: bool = False,
        carry_previous: float = 0.0,
        rank: int = 0,
        world_size: int = 1,
        decoder: str = "torchvision",
        decode_device: str | None = None,
        prefetch_factor: int = 2,
    ) -> None:
        n = len(data.train_files)
        _check_common(decoder, decode_device, workers)
        if labels.shape != (n,):
            raise UserError(
                f"labels of shape {tuple(labels.shape)} do not match {n} images; pass one "
                "label per training image"
            )
        unknown = sorted(v for v in views if v != "plain" and _view_number(v) is None)
        if unknown or not views:
            raise UserError(
                f"the streaming image reader provides the views {list(STREAMED_VIEWS)}, not "
                f"{unknown or 'none'}; use a method with a weak view only (e.g. ce, bsd, pskd, te)"
            )
        if float(carry_previous) != 0.0:
            raise UserError(
                "DLB's carried batches are not streamed yet; use method=dlb with an in-memory "
                "dataset (cifar10, arrays, ...)"
            )
        if not 0 <= int(rank) < int(world_size):
            raise UserError(f"rank={rank} must be in [0, world_size={world_size})")
        batch_size = int(batch_size)
        if batch_size < int(world_size) or batch_size > n:
            raise UserError(
                f"batch_size={batch_size} must be between world_size={world_size} and the "
                f"training-set size {n}"
            )
        if int(seed) < 0:
            raise UserError(f"seed={seed} must be a non-negative integer")
        self.data = data
        self.device = torch.device(device)
        self.labels = labels
        self.batch_size = batch_size
        self.views = tuple(views)
        self.seed = int(seed)
        self.workers = int(workers)
        self.drop_last = bool(drop_last)
        self.rank, self.world_size = int(rank), int(world_size)
        self.decoder = decoder
        self.gpu_decode = decode_device == "cuda"
        self.prefetch_factor = int(prefetch_factor)
        self.num_carried = 0
        self.fold_last = folds_last_batch(n, batch_size, self.world_size, self.drop_last)
        self.normalise = _normaliser(data.mean, data.std, self.device)
        self.train_transform = _train_transform(data.image_size)
        self.plain_transform = _eval_transform(data.image_size, data.resize)

    @property
    def num_samples(self) -> int:
        return len(self.data.train_files)

    def __len__(self) -> int:
        return steps_per_epoch(self.num_samples, self.batch_size, self.drop_last, self.world_size)

    def permutation(self, epoch: int) -> Tensor:
        """The epoch's global sample order, from ``(seed, epoch)`` only (on the CPU)."""
        gen = torch.Generator(device="cpu")
        gen.manual_seed(epoch_generator_seed(self.seed, epoch))
        return torch.randperm(self.num_samples, generator=gen)

    def shard(self, global_idx: Tensor) -> Tensor:
        """This process's contiguous share of one global batch (as every loader splits it)."""
        return process_share(global_idx, self.rank, self.world_size)

    def _loader(self, batches: list[list[tuple[int, int]]], view: str) -> DataLoader:
        number = _view_number(view)
        transform = self.plain_transform if number is None else self.train_transform
        seed = None if number is None else self.seed
        dataset = _Images(
            self.data.train_files, transform, self.decoder, seed, self.gpu_decode, number or 0
        )
        return DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=self.workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=self.prefetch_factor if self.workers else None,
            persistent_workers=False,
            generator=_own_generator(),
        )

    def epoch(
        self, epoch: int, start_step: int = 0, plan: EpochPlan | None = None
    ) -> Iterator[Batch]:
        """Yield this process's batches of ``epoch`` from step ``start_step`` on; with a
        method's ``plan`` (:class:`noisybench.method.EpochPlan`), the plan's steps."""
        steps_parts: list[tuple[int, tuple[tuple[str, int], ...]]] = []
        schedule = []
        if plan is not None:
            check_plan(plan, len(self.data.train_files), self.num_carried)
            for step, idx, parts in planned_steps(plan, start_step, self.rank, self.world_size):
                steps_parts.append((step, parts))
                schedule.append([(epoch, int(i)) for i in idx.cpu()])
        else:
            steps = len(self)
            check_start_step(start_step, steps)
            perm = self.permutation(epoch)
            n, b = self.num_samples, self.batch_size
            for step in range(int(start_step), steps):
                stop = n if (self.fold_last and step == steps - 1) else min(step * b + b, n)
                share = self.shard(perm[step * b : stop])
                steps_parts.append((step, ()))
                schedule.append([(epoch, int(i)) for i in share])
        if not schedule:
            return
        iterators = {view: iter(self._loader(schedule, view)) for view in self.views}
        transforms = {
            v: self.plain_transform if _view_number(v) is None else self.train_transform
            for v in self.views
        }
        for step, parts in steps_parts:
            views: dict[str, Tensor] = {}
            idx = None
            for view, it in iterators.items():
                images, idx = _checked(next(it))
                if self.gpu_decode:
                    seeds = [
                        -1
                        if _view_number(view) is None
                        else sample_seed(self.seed, epoch, int(i), _view_number(view) or 0)
                        for i in idx
                    ]
                    images = _gpu_decode(images, transforms[view], self.device, seeds)
                views[view] = self.normalise(images)
            assert idx is not None
            idx = idx.to(self.labels.device, non_blocking=True)
            yield Batch(
                idx=idx,
                target=self.labels.index_select(0, idx),
                views=views,
                parts=parts,
                step=step,
            )

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)


def eval_batches(  # noqa: PLR0913
    data: FolderData,
    split: str,
    batch_size: int,
    device: torch.device | str = "cpu",
    workers: int = 4,
    decoder: str = "torchvision",
    decode_device: str | None = None,
    subset: Sequence[int] | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Evaluation batches of ``split`` (``"test"`` or ``"train"``): ``(normalised float
    images (B, 3, S, S) on device, labels (B,) on device, sample indices (B,))``, resize +
    centre crop, in sample order (``subset``: only these indices, e.g. a fixed subset of the
    training set for memorisation diagnostics). With ``world_size > 1`` each process gets
    a contiguous block of the samples (gather the outputs across processes).
    """
    _check_common(decoder, decode_device, workers)
    if split not in ("test", "train"):
        raise UserError(f"eval split={split!r} must be 'test' or 'train'")
    files = data.test_files if split == "test" else data.train_files
    labels = data.test_labels if split == "test" else data.train_labels
    order = list(range(len(files))) if subset is None else [int(i) for i in subset]
    lo = rank * len(order) // world_size
    hi = (rank + 1) * len(order) // world_size
    order = order[lo:hi]
    dev = torch.device(device)
    gpu = decode_device == "cuda"
    transform = _eval_transform(data.image_size, data.resize)
    dataset = _Images(files, transform, decoder, None, gpu)
    batches = [
        [(0, i) for i in order[s : s + int(batch_size)]]
        for s in range(0, len(order), int(batch_size))
    ]
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=int(workers),
        collate_fn=_collate,
        pin_memory=dev.type == "cuda",
        generator=_own_generator(),
    )
    normalise = _normaliser(data.mean, data.std, dev)
    for images, idx in map(_checked, loader):
        if gpu:
            images = _gpu_decode(images, transform, dev, [-1] * len(images))
        yield normalise(images), labels[idx].to(dev), idx


def steps_per_epoch(num_samples: int, batch_size: int, drop_last: bool, world_size: int = 1) -> int:
    """Optimizer steps per epoch for a global batch (same rule as the loaders, including the
    folded last batch of :func:`noisybench.data.loader.folds_last_batch`)."""
    if drop_last or folds_last_batch(num_samples, batch_size, world_size, drop_last):
        return num_samples // batch_size
    return math.ceil(num_samples / batch_size)
