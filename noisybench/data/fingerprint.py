"""What a path-based reader reads, as one digest: part of the experiment's identity.

A run's config names its data by path (``dataset.reader.root`` of an image folder,
``dataset.reader.path`` of an ``.npz``, label files). A path is not an identity: another folder
at the same path, or the same config pointed at ``imgs2`` instead of ``imgs``, is other data
(issue 20, item 3: a run on ``imgs2`` reported ``imgs``'s result as its own). So the readers'
configs carry ``fingerprint: ${nb_data_fingerprint:}``, resolved here from the reader's own
node; the digest is an identity key like any other, saved in ``result.json``: a run directory
whose data had another digest is refused (naming ``dataset.reader.fingerprint``), and
``noisybench evaluate`` hands the saved digest to the reader, which refuses other data.

What goes in (cheap for millions of files, no image is opened):

* image folder: the split and class folder names and, for every image, its relative path and
  size in bytes (one ``stat`` per file, which the scan needs anyway to refuse empty files,
  broken links and FIFOs); not the modification times, so a copy of the data set (``cp -r``,
  ``rsync`` without ``-t``) stays the same data set;
* ``.npz``: its size and its zip directory (each member's name, sizes and CRC-32, which
  ``numpy.savez`` computed over every byte when it wrote the file): a content checksum for the
  cost of reading the directory;
* label files: SHA-256 of their bytes (N integers: 10 MB at ImageNet size).

The scan is done once per process (cached by path), and it also finds what can be seen
without decoding (:func:`scan_folder`), so a bad file is refused before anything is written.
This module imports neither torch nor NumPy: the command line's checks use it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from noisybench.errors import UserError

__all__ = [
    "IMAGE_SUFFIXES",
    "FolderScan",
    "data_fingerprint",
    "file_digest",
    "npz_digest",
    "scan_folder",
    "show_path",
]

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
_SCANS: dict[tuple[str, str, str], FolderScan] = {}


def show_path(path: str | os.PathLike) -> str:
    """A path printable on one line: bytes that are not UTF-8 as ``\\xNN``, control
    characters escaped (a file name must not move the terminal's cursor)."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass
class FolderScan:
    """One image folder's splits: files in stable order, labels, classes, what was skipped,
    and the digest of it all."""

    train_files: list[str]
    train_labels: list[int]
    test_files: list[str]
    test_labels: list[int]
    classes: list[str]
    skipped: int = 0
    digest: str = ""
    skipped_examples: list[str] = field(default_factory=list)


def _problem(entry: os.DirEntry) -> tuple[str | None, int]:
    """Why ``entry`` (an image-named file) cannot be an image, seen without decoding, and its
    size; ``(None, size)`` when it can."""
    try:
        entry.name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not UTF-8", 0
    try:
        st = entry.stat()  # follows a symlink
    except FileNotFoundError:
        return "a symbolic link to nothing", 0
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symbolic link loop", 0
        return f"unreadable ({err.strerror})", 0
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
        if stat.S_ISDIR(st.st_mode):
            kind = "a folder"
        return kind, 0
    if st.st_size == 0:
        return "empty (0 bytes)", 0
    return None, int(st.st_size)


def _scan_split(
    split_dir: Path, classes: Sequence[str] | None, digest: Any, tag: str, scan: FolderScan
) -> tuple[list[str], list[int], list[str]]:
    if not split_dir.is_dir():
        raise UserError(
            f"image folder {show_path(split_dir)} does not exist; lay the data out as "
            "root/train/<class>/<image> and root/val/<class>/<image>"
        )
    found = sorted(
        e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")
    )
    if not found:
        raise UserError(
            f"image folder {show_path(split_dir)} has no class sub-folders; put each class's "
            f"images in {show_path(split_dir)}/<class>/"
        )
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise UserError(
                f"{show_path(split_dir)} has class folders not in train/: "
                f"{[show_path(u) for u in unknown[:3]]}; use the same class folder names in "
                "train/ and val/"
            )
    index = {name: i for i, name in enumerate(classes)}
    files: list[str] = []
    labels: list[int] = []
    bad: list[str] = []
    digest.update(f"split {tag}: {len(found)} classes\n".encode("utf-8", "surrogateescape"))
    for name in found:
        folder = split_dir / name
        images = []
        for entry in os.scandir(folder):
            lower = entry.name.lower()
            hidden = lower.startswith(".")  # .DS_Store, macOS "._x.jpg" AppleDouble files
            if hidden or not lower.endswith(IMAGE_SUFFIXES):
                scan.skipped += 1
                if len(scan.skipped_examples) < 3:
                    scan.skipped_examples.append(show_path(entry.path))
                continue
            problem, size = _problem(entry)
            if problem is not None:
                bad.append(f"{show_path(entry.path)} is {problem}")
                continue
            images.append((entry.name, size))
        images.sort()
        if not images and not bad:
            raise UserError(
                f"class folder {show_path(folder)} has no images ({'/'.join(IMAGE_SUFFIXES)}); "
                "remove the empty folder or add its images"
            )
        digest.update(f"class {name}\n".encode("utf-8", "surrogateescape"))
        digest.update("".join(f"{n}\t{size}\n" for n, size in images).encode("utf-8"))
        prefix = os.path.join(str(folder), "")
        files += [prefix + n for n, _ in images]
        labels += [index[name]] * len(images)
    if bad:
        more = f" (and {len(bad) - 1} more such files)" if len(bad) > 1 else ""
        raise UserError(
            f"{bad[0]}{more}, so it cannot be an image; remove or replace it and run the same "
            "command again"
        )
    return files, labels, list(classes)


def scan_folder(root: str | os.PathLike, train: str = "train", val: str = "val") -> FolderScan:
    """Scan ``root/train`` and ``root/val`` once per process (cached by absolute path).

    Entries are refused (one line naming the first, with a count) when their name has an image
    suffix but they cannot be an image, seen without opening them: empty files, symbolic links
    to nothing or in a loop, FIFOs and other non-regular files, names that are not UTF-8.
    Skipped and counted: hidden files (``.DS_Store``, macOS ``._*`` AppleDouble files) and
    files without an image suffix (``.jpeg``, ``.jpg``, ``.png``, any case)."""
    base = Path(os.path.abspath(Path(str(root)).expanduser()))
    key = (str(base), str(train), str(val))
    if key in _SCANS:
        return _SCANS[key]
    if not base.is_dir():
        raise UserError(
            f"dataset.reader.root={show_path(root)} is not a folder; point it at the folder that "
            f"holds {train}/ and {val}/"
        )
    digest = hashlib.sha256(b"noisybench image folder v1\n")
    scan = FolderScan([], [], [], [], [])
    try:
        scan.train_files, scan.train_labels, scan.classes = _scan_split(
            base / train, None, digest, "train", scan
        )
        scan.test_files, scan.test_labels, _ = _scan_split(
            base / val, scan.classes, digest, "val", scan
        )
    except PermissionError as err:
        raise UserError(
            f"{show_path(err.filename or base)} cannot be read ({err.strerror}); give this user "
            "read access to the image folder"
        ) from None
    scan.digest = digest.hexdigest()[:32]
    _SCANS[key] = scan
    return scan


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a (small) file's bytes, e.g. a label file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:32]


def npz_digest(path: str | os.PathLike) -> str:
    """An ``.npz`` file's size and zip directory (member names, sizes, CRC-32s)."""
    h = hashlib.sha256(b"noisybench npz v1\n")
    h.update(str(os.path.getsize(path)).encode())
    try:
        with zipfile.ZipFile(path) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                line = f"{info.filename}\t{info.file_size}\t{info.compress_size}\t{info.CRC}\n"
                h.update(line.encode("utf-8", "surrogateescape"))
    except (zipfile.BadZipFile, OSError):
        h.update(file_digest(path).encode())  # not a zip: the reader refuses it anyway
    return h.hexdigest()[:32]


def data_fingerprint(reader: Mapping[str, Any]) -> str | None:
    """The digest of what ``reader`` (a reader config node) reads, or None when it names no
    path (yet: a ``???`` value is refused by the config check with its own line)."""
    target = str(reader.get("_target_", ""))

    def value(key: str) -> Any:
        try:
            got = reader.get(key)
        except Exception:  # a missing (???) value: no fingerprint, refused elsewhere
            return None
        return None if got in (None, "???") else got

    parts = []
    if target.endswith("folder.load_folder"):
        root = value("root")
        if root is None:
            return None
        scan = scan_folder(root, str(value("train") or "train"), str(value("val") or "val"))
        parts.append(f"folder {scan.digest}")
    elif target.endswith("arrays.load_arrays"):
        path = value("path")
        if path is None:
            return None
        file = Path(str(path)).expanduser()
        if not file.is_file():
            raise UserError(
                f"dataset.reader.path={show_path(path)} is not a file; give an .npz with "
                "train_images, train_labels, test_images, test_labels"
            )
        parts.append(f"npz {npz_digest(file)}")
    else:
        return None
    for key in ("noisy_labels", "clean_labels"):
        label_file = value(key)
        if label_file is not None:
            file = Path(str(label_file)).expanduser()
            if not file.is_file():
                raise UserError(
                    f"dataset.reader.{key}={show_path(label_file)} does not exist; give the "
                    "label file's path"
                )
            parts.append(f"{key} {file_digest(file)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def refuse_other_data(saved: Any, now: str | None, where: str) -> None:
    """Refuse a reader asked to read the data of ``saved`` digest when it reads ``now``."""
    if saved in (None, "", "???") or now is None or str(saved) == now:
        return
    raise UserError(
        f"{where} holds other data than the run was trained on (dataset.reader.fingerprint "
        f"{saved} then, {now} now: other files, sizes or labels); point dataset.reader at the "
        "data the run used, or rerun the experiment on this data"
    )
