"""Images/s of the streaming image-folder reader (noisybench/data/folder.py) on this CPU,
against torchvision's standard pipeline (``ImageFolder`` + PIL ``RandomResizedCrop(224)``,
``RandomHorizontalFlip``, ``ToTensor``, ``Normalize`` + ``DataLoader``) with the same number of
workers and batch size, on a generated folder of ImageNet-sized JPEG files (500 x 375,
quality 90, smooth content plus noise so that they compress like photographs).

Both produce normalised float32 (B, 3, 224, 224) training batches; the reader additionally
delivers per-sample indices and labels as ``noisybench.method.Batch``. The GPU decoding path
(``decode_device="cuda"``) cannot be measured here (no GPU).

    PYTHONPATH=$PWD python benchmarks/bench_folder.py   # -> benchmarks/results/folder_reader.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parent / "results" / "folder_reader.json"


def make_folder(root: Path, classes: int, per_class: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    for split, count in (("train", per_class), ("val", 1)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(count):
                f = rng.uniform(0.005, 0.05, 3)
                base = np.stack(
                    [127 + 100 * np.sin(f[k] * xx + f[(k + 1) % 3] * yy + k) for k in range(3)],
                    axis=-1,
                )
                pix = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pix).save(folder / f"img_{j:05d}.JPEG", quality=90)


def time_batches(iterator, warmup: int) -> tuple[float, int]:
    count = 0
    start = None
    for step, item in enumerate(iterator):
        if step == warmup:
            start = time.perf_counter()
            count = 0
        count += item
    return time.perf_counter() - start, count


def bench_reader(root: Path, decoder: str, workers: int, batch: int, warmup: int) -> float:
    from noisybench.data.folder import FolderLoader, load_folder

    data = load_folder(str(root))
    loader = FolderLoader(
        data, data.train_labels, batch, ("weak",), seed=0, workers=workers, decoder=decoder
    )
    seconds, images = time_batches((b.idx.shape[0] for b in loader.epoch(0)), warmup)
    return images / seconds


def bench_torchvision(root: Path, workers: int, batch: int, warmup: int) -> float:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    dataset = datasets.ImageFolder(str(root / "train"), transform=tf)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers)
    seconds, images = time_batches((x.shape[0] for x, _ in loader), warmup)
    return images / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--per-class", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2, help="batches not timed")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, list[float]] = {
        "reader_pil": [],
        "reader_torchvision": [],
        "torchvision_imagefolder_pil": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench_folder_") as tmp:
        root = Path(tmp)
        make_folder(root, args.classes, args.per_class)
        for _ in range(args.repeats):
            for name in results:
                if name == "torchvision_imagefolder_pil":
                    rate = bench_torchvision(root, args.workers, args.batch, args.warmup)
                else:
                    dec = name.split("_")[1]
                    rate = bench_reader(root, dec, args.workers, args.batch, args.warmup)
                results[name].append(rate)
                print(f"{name}: {rate:.1f} images/s", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), no GPU",
                "images": args.classes * args.per_class,
                "image_size": "500x375 JPEG q90 -> 224x224",
                "workers": args.workers,
                "batch": args.batch,
                "images_per_s": {k: v for k, v in results.items()},
                "best_images_per_s": {k: max(v) for k, v in results.items()},
                "gpu_decoding": "not measured: no GPU on this machine",
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
