"""Manifest hash and export of a real-noise dataset to the folder + label-file form.

Command line (``DATASET`` is a ``conf/dataset`` name; ``key=value`` set its reader's options)::

    python -m noisybench.data.realnoise hash clothing1m root=/data/clothing1m
    python -m noisybench.data.realnoise manifest clothing1m OUT.tsv root=/data/clothing1m
    python -m noisybench.data.realnoise export clothing1m OUT_DIR root=/data/clothing1m [--copy]

``hash`` prints the manifest's SHA-256 (the value a run records) with the split sizes and the
counts of skipped images, ``manifest`` writes the manifest itself (``sha256sum OUT.tsv``
prints the same digest), ``export`` writes the folder layout that ``dataset=folder
dataset.reader.folder_labels=noisy`` reads: ``OUT/train/<class>/`` (by given label),
``OUT/val/<class>/`` (the test split), ``OUT/selection/<class>/`` (a clean selection split
where the dataset has one), one folder per extra test set, ``OUT/classes.txt``,
``OUT/manifest.tsv`` and, when every training sample's clean label is known,
``OUT/clean_labels.txt`` (``dataset.reader.clean_labels``) in the folder reader's sample
order; partly known clean labels go to ``OUT/known_clean_labels.tsv`` (``path<TAB>label``).
Class folders are ``0000``, ``0001``, ... (sorted = class order) and files
``<manifest index>_<name>`` (sorted = manifest order), so the folder reader's sample order is
the manifest's order within each class. Images are symbolic links (``--copy``: copies).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from noisybench.data.realnoise.common import (
    RealNoiseData,
    manifest_bytes,
    summary,
)
from noisybench.errors import UserError

__all__ = ["export_folder", "load_dataset", "main", "write_manifest"]


def load_dataset(dataset: str, options: list[str]) -> RealNoiseData:
    """Build a dataset from ``conf/dataset/<dataset>.yaml`` with ``key=value`` reader options
    (``data_dir=...`` fills the file's ``${data_dir}``)."""
    from omegaconf import OmegaConf

    from noisybench.config import conf_dir, instantiate

    path = conf_dir() / "dataset" / f"{dataset}.yaml"
    if "/" in dataset or not path.is_file():
        raise UserError(
            f"dataset {dataset!r} has no file conf/dataset/{dataset}.yaml; use one of "
            "clothing1m, webvision_mini, animal10n, food101n, red_mini_imagenet"
        )
    node = OmegaConf.load(path)
    reader_target = str(node.reader.get("_target_", ""))
    if not reader_target.startswith("noisybench.data.realnoise."):
        raise UserError(
            f"dataset {dataset} is not a real-noise dataset (its reader is {reader_target}); "
            "use one of clothing1m, webvision_mini, animal10n, food101n, red_mini_imagenet"
        )
    data_dir = "./data"
    reader = OmegaConf.to_container(node.reader, resolve=False)
    assert isinstance(reader, dict)
    for item in options:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"option {item!r} is not key=value; write e.g. root=/data/clothing1m")
        if key == "data_dir":
            data_dir = value
        elif key in reader and key != "_target_":
            reader[key] = yaml.safe_load(value) if value else None  # typed: null, 0.4, true
        else:
            allowed = sorted(k for k in reader if k != "_target_")
            raise UserError(f"{dataset} has no reader option {key!r}; use one of {allowed}")
    cfg = OmegaConf.create({"data_dir": data_dir, "reader": reader})
    return instantiate(cfg.reader, f"dataset {dataset}")


def write_manifest(data: RealNoiseData, path: str | os.PathLike[str]) -> str:
    """Write the manifest (the exact bytes hashed); returns its SHA-256."""
    payload = manifest_bytes(data.name, data.manifest)
    out = Path(path)
    if out.exists():
        raise UserError(f"{out} exists; choose a new file name (nothing is overwritten)")
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, out)
    return hashlib.sha256(payload).hexdigest()


def _files_by_split(data: RealNoiseData) -> dict[str, list[str]]:
    out = {"train": list(data.train_files), "test": list(data.test_files)}
    if data.val_files is not None:
        out["val"] = list(data.val_files)
    for name, (files, _) in data.extra_tests.items():
        out[name] = list(files)
    return out


def export_folder(data: RealNoiseData, out: str | os.PathLike[str], copy: bool = False) -> Path:
    """Write ``data`` in the folder + label-file form (module docstring); returns ``out``."""
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise UserError(f"{root} is not empty; export into a new folder (nothing is overwritten)")
    k = len(data.class_names)
    given_train = {int(g) for s, _, g, _, _ in data.manifest if s == "train"}
    if len(given_train) != k:
        absent = sorted(set(range(k)) - given_train)
        raise UserError(
            f"{data.name}: classes {absent[:5]} have no training sample, so the folder form "
            "would renumber the classes; export a copy with every class present"
        )
    files = _files_by_split(data)
    folder_of = {"train": "train", "test": "val", "val": "selection"}
    position = {split: 0 for split in files}
    root.mkdir(parents=True, exist_ok=True)
    clean_rows: list[tuple[str, int, int]] = []  # (class folder, file name, clean)
    for split, rel, given, clean, _ in data.manifest:
        index = position[split]
        position[split] += 1
        source = files[split][index]
        name = f"{index:08d}_{Path(rel).name}"
        target = root / folder_of.get(split, split) / f"{given:04d}" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if copy:
            shutil.copyfile(source, target)
        else:
            os.symlink(os.path.abspath(source), target)
        if split == "train":
            clean_rows.append((f"{given:04d}/{name}", clean, given))
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in data.class_names))
    (root / "manifest.tsv").write_bytes(manifest_bytes(data.name, data.manifest))
    clean_rows.sort()  # the folder reader's order: class folder, then file name
    if all(clean >= 0 for _, clean, _ in clean_rows):
        (root / "clean_labels.txt").write_text("".join(f"{c}\n" for _, c, _ in clean_rows))
    elif any(clean >= 0 for _, clean, _ in clean_rows):
        (root / "known_clean_labels.tsv").write_text(
            "".join(f"train/{p}\t{c}\n" for p, c, _ in clean_rows if c >= 0)
        )
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m noisybench.data.realnoise",
        description="Manifest hash and folder export of the real-noise datasets.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_hash = sub.add_parser("hash", help="print the manifest SHA-256 and split sizes (JSON)")
    p_hash.add_argument("dataset")
    p_hash.add_argument("options", nargs="*", help="reader options key=value (root=...)")
    p_man = sub.add_parser("manifest", help="write the manifest TSV")
    p_man.add_argument("dataset")
    p_man.add_argument("out")
    p_man.add_argument("options", nargs="*")
    p_exp = sub.add_parser("export", help="write the folder + label-file form")
    p_exp.add_argument("dataset")
    p_exp.add_argument("out")
    p_exp.add_argument("options", nargs="*")
    p_exp.add_argument("--copy", action="store_true", help="copy images instead of linking")
    args = parser.parse_args(argv)
    try:
        data = load_dataset(args.dataset, list(args.options))
        info: dict[str, Any] = summary(data)
        if args.command == "manifest":
            write_manifest(data, args.out)
        elif args.command == "export":
            export_folder(data, args.out, copy=args.copy)
    except UserError as err:
        print(f"noisybench: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=1, default=str))
    return 0
