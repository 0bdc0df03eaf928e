"""Images/s of the real-noise readers' streamed pipeline on this CPU at 224 and 299 pixels,
against torchvision's ``ImageFolder`` + PIL pipeline on the same images, plus the cost of
reading the lists / building the manifest and of drawing the per-epoch class-balanced subset.

The tree is a generated Clothing1M layout (14 classes, ImageNet-sized 500 x 375 JPEG files,
quality 90, smooth content plus noise, as ``bench_folder.py``); torchvision reads the same
files through the folder export (``noisybench.data.realnoise.export``, symbolic links).
Training views: the reader's ``weak`` view (``RandomResizedCrop`` + flip on uint8 tensors in
the workers, float normalisation after the batch is formed) against torchvision's
``RandomResizedCrop`` + flip + ``ToTensor`` + ``Normalize`` on PIL images, same workers and
batch. The machine is shared: the load average before and after is recorded with the rates.

    PYTHONPATH=$PWD python benchmarks/bench_realnoise.py
    # -> benchmarks/results/realnoise_reader.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_folder import time_batches

OUT = Path(__file__).resolve().parent / "results" / "realnoise_reader.json"


def photo(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    f = rng.uniform(0.005, 0.05, 3)
    base = np.stack(
        [127 + 100 * np.sin(f[k] * xx + f[(k + 1) % 3] * yy + k) for k in range(3)], axis=-1
    )
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def make_clothing1m(root: Path, per_class: int) -> None:
    """The Clothing1M release layout (lists + images/), every class present."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    noisy, clean, train, val, test = [], [], [], [], []
    for c in range(14):
        for j in range(per_class + 2):
            rel = f"{c}/{j % 100:02d}/{c}_{j}.jpg"
            (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(photo(rng, yy, xx)).save(root / "images" / rel, quality=90)
            if j < per_class:
                noisy.append(f"images/{rel} {c}")
                train.append(f"images/{rel}")
            else:
                clean.append(f"images/{rel} {c}")
                (val if j == per_class else test).append(f"images/{rel}")
    for name, lines in (
        ("noisy_label_kv.txt", noisy),
        ("clean_label_kv.txt", clean),
        ("noisy_train_key_list.txt", train),
        ("clean_val_key_list.txt", val),
        ("clean_test_key_list.txt", test),
    ):
        (root / name).write_text("".join(f"{line}\n" for line in lines))


def bench_reader(data, size: int, resize: int, workers: int, batch: int, warmup: int) -> float:
    import dataclasses

    from noisybench.data.folder import FolderLoader

    data = dataclasses.replace(data, image_size=size, resize=resize)
    loader = FolderLoader(
        data, data.given_labels, batch, ("weak",), seed=0, workers=workers, decoder="torchvision"
    )
    seconds, images = time_batches((b.idx.shape[0] for b in loader.epoch(0)), warmup)
    return images / seconds


def bench_torchvision(root: Path, size: int, workers: int, batch: int, warmup: int) -> float:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize((0.6959, 0.6537, 0.6371), (0.3113, 0.3192, 0.3214)),
        ]
    )
    dataset = datasets.ImageFolder(str(root / "train"), transform=tf)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers)
    seconds, images = time_batches((x.shape[0] for x, _ in loader), warmup)
    return images / seconds


def bench_lists(n: int) -> dict[str, float]:
    """Seconds to parse a Clothing1M-size ``key label`` list, to serialise and hash its
    manifest, and to check that many (absent) paths on disk: the reader's fixed cost per run
    at the dataset's real size, without the images."""
    import hashlib

    from noisybench.data.realnoise.common import manifest_bytes, read_pairs

    with tempfile.TemporaryDirectory(prefix="bench_lists_") as tmp:
        path = Path(tmp) / "noisy_label_kv.txt"
        path.write_text(
            "".join(f"images/{i % 10}/{i % 100:02d}/{i}.jpg {i % 14}\n" for i in range(n))
        )
        start = time.perf_counter()
        pairs = read_pairs(path, "list", 14, "")
        parse = time.perf_counter() - start
        start = time.perf_counter()
        hashlib.sha256(manifest_bytes("x", [("train", k, y, -1, -1) for k, y in pairs.items()]))
        manifest = time.perf_counter() - start
        start = time.perf_counter()
        base = tmp
        absent = sum(not os.path.isfile(os.path.join(base, k)) for k in pairs)
        stat = time.perf_counter() - start
        assert absent == n
    return {"parse_s": round(parse, 2), "manifest_sha256_s": round(manifest, 2),
            "stat_every_path_s": round(stat, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1, help="batches not timed")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from noisybench.data.realnoise import balanced_subset, load_clothing1m
    from noisybench.data.realnoise.export import export_folder

    load_before = os.getloadavg()
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_realnoise_") as tmp:
        root = Path(tmp) / "clothing1m"
        make_clothing1m(root, args.per_class)
        start = time.perf_counter()
        data = load_clothing1m(str(root))
        lists_s = time.perf_counter() - start
        export_folder(data, Path(tmp) / "folder")
        for _ in range(args.repeats):
            for size, resize in ((224, 256), (299, 320)):
                for name in ("reader", "torchvision_imagefolder_pil"):
                    if name == "reader":
                        rate = bench_reader(
                            data, size, resize, args.workers, args.batch, args.warmup
                        )
                    else:
                        rate = bench_torchvision(
                            Path(tmp) / "folder", size, args.workers, args.batch, args.warmup
                        )
                    results.setdefault(f"{name}_{size}", []).append(rate)
                    print(f"{name} {size}px: {rate:.1f} images/s", flush=True)
    # the per-epoch subset at Clothing1M's size: 1,000,000 noisy labels, 64,000 drawn
    labels = torch.as_tensor(np.random.default_rng(0).integers(0, 14, 1_000_000))
    balanced_subset(labels, 64000, seed=0, epoch=0)
    start = time.perf_counter()
    for epoch in range(5):
        balanced_subset(labels, 64000, seed=0, epoch=epoch)
    subset_s = (time.perf_counter() - start) / 5
    print(f"balanced_subset(1M labels, 64000): {subset_s * 1000:.0f} ms", flush=True)
    lists = bench_lists(1_000_000)
    print(f"1M-line lists: {lists}", flush=True)
    load_after = os.getloadavg()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), no GPU",
                "load_average_1_5_15_before": [round(v, 2) for v in load_before],
                "load_average_1_5_15_after": [round(v, 2) for v in load_after],
                "images": 14 * args.per_class,
                "source": "500x375 JPEG q90, Clothing1M layout",
                "workers": args.workers,
                "batch": args.batch,
                "images_per_s": results,
                "best_images_per_s": {k: round(max(v), 1) for k, v in results.items()},
                "read_lists_and_manifest_s": round(lists_s, 4),
                "balanced_subset_1M_to_64000_ms": round(subset_s * 1000, 1),
                "clothing1m_size_lists_1M_s": lists,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
