"""Atomic writes and safe reads: a crash never leaves a half-written file behind, and a
checkpoint can never execute code when it is read (``weights_only=True``).

Every file is written to a temporary file in the same directory, flushed to disk, then renamed
over its final name (``os.replace``, atomic on POSIX file systems), and the directory entry is
flushed too. A process killed at any instant (SIGKILL, power loss after the fsync) therefore
leaves either the old complete file or the new complete file, plus at worst a stray
``.<name>.*.tmp`` that :func:`remove_stale_temporaries` clears.

Checkpoints keep the file they replace as ``<name>.prev``. The rotation hard-links the current
file to ``.prev`` before the new file is renamed over it, so ``<name>`` exists and is complete
at every instant; SIGINT/SIGTERM are held back during the renames so that a second Ctrl-C
cannot split them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from noisybench.errors import UserError

if TYPE_CHECKING:  # torch is imported where it is used: the command line's checks stay fast
    import torch

__all__ = [
    "atomic_save_checkpoint",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "disk_full",
    "load_checkpoint",
    "read_json",
    "remove_stale_temporaries",
]

_HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Delay SIGINT/SIGTERM until the block ends (their handlers then run as usual)."""
    can_mask = hasattr(signal, "pthread_sigmask") and threading.current_thread() is (
        threading.main_thread()
    )
    if not can_mask:
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _fsync_dir(directory: Path) -> None:
    """Flush a directory entry (a rename) to disk; best effort (not every OS allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _keep_as_previous(path: Path) -> None:
    """Make ``<name>.prev`` a copy of ``path`` without ever removing ``path``: a hard link
    renamed over ``.prev`` (falls back to renaming ``path`` where links are not supported)."""
    prev = path.with_name(path.name + ".prev")
    link = path.with_name(f".{path.name}.prev.tmp")
    try:
        link.unlink(missing_ok=True)
        os.link(path, link)
    except OSError:
        os.replace(path, prev)  # no hard links here: a short window without ``path``
        return
    try:
        os.replace(link, prev)
    except BaseException:
        link.unlink(missing_ok=True)
        raise


def _atomic_replace(
    path: Path,
    write: Callable[[Any], Any],
    keep_previous: bool = False,
    before_replace: Callable[[], None] | None = None,
) -> None:
    """Write through ``write(file_object)`` into a temporary file beside ``path``, flush it to
    disk, then rename it over ``path``. With ``keep_previous`` the file it replaces survives
    as ``<name>.prev``. ``before_replace`` runs once the new file is complete on disk, just
    before the renames (a test hook)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; give it the mode a plain open() would (0666 & ~umask)
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        with _signals_held():
            if keep_previous and path.exists():
                _keep_as_previous(path)
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def disk_full(exc: BaseException | None) -> OSError | None:
    """The "no space left on device" or "disk quota exceeded" error behind ``exc`` (itself,
    or one it was raised from or while handling: ``torch.save`` turns it into a
    RuntimeError), or None."""
    codes = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in codes:
            return exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return None


def atomic_write(path: str | Path, write: Callable[[Any], Any]) -> None:
    """Write ``path`` atomically through ``write(binary_file)`` (temp file, fsync, rename)."""
    _atomic_replace(Path(path), write)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    _atomic_replace(Path(path), lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (NaN is written as ``null``)."""
    atomic_write_text(path, json.dumps(_finite(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any | None:
    """The JSON content of ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _finite(obj: Any) -> Any:
    """Replace float NaN/inf by None so the JSON is standard."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def atomic_save_checkpoint(
    obj: dict[str, Any], path: str | Path, before_replace: Callable[[], None] | None = None
) -> None:
    """Save ``obj`` with ``torch.save`` atomically; the checkpoint it replaces is kept as
    ``<name>.prev`` so one good checkpoint survives even a corrupted newest file.

    ``before_replace`` (tests only) runs when the new file is complete but not yet in place.
    """
    import torch

    _atomic_replace(
        Path(path), lambda f: torch.save(obj, f), keep_previous=True, before_replace=before_replace
    )


def remove_stale_temporaries(directory: str | Path, names: tuple[str, ...]) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files that a killed writer of ``names`` left in
    ``directory``; returns what was removed. Call it only while no other process writes
    there (the run directory's lock is held)."""
    removed = []
    for name in names:
        for stray in Path(directory).glob(f".{name}.*tmp"):
            if stray.is_file():
                stray.unlink(missing_ok=True)
                removed.append(stray)
    return removed


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`atomic_save_checkpoint` with ``weights_only=True``.

    Raises:
        UserError: the file is missing, truncated or not a noisybench checkpoint (the message
            names the ``.prev`` file to fall back on when there is one).
    """
    import torch

    path = Path(path)
    if path.exists() and not path.is_file():
        raise UserError(
            f"checkpoint {path} is not a regular file (a directory or a special file); move it "
            "away, or pass restart=true to start over (old files are moved to previous/)"
        )
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; check the run directory")
    prev = path.with_name(path.name + ".prev")
    hint = (
        f"the previous checkpoint {prev.name} is kept: rename it to {path.name} to resume from "
        "it, or pass restart=true to start over (old files are moved to previous/)"
        if prev.is_file()
        else "pass restart=true to start over (old files are moved to previous/)"
    )
    try:
        with warnings.catch_warnings():  # torch warns, e.g. "looks like TorchScript"
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, foreign objects, ...
        raise UserError(f"checkpoint {path} {_load_failure(exc)}; {hint}") from exc
    if not isinstance(obj, dict) or "model" not in obj:
        raise UserError(f"{path} is not a noisybench checkpoint (no 'model' entry); {hint}")
    return obj


def _load_failure(exc: BaseException) -> str:
    """What went wrong in ``torch.load(..., weights_only=True)``, in a few words, without
    torch's advice to load the file unsafely (noisybench never does)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    unpickler = re.search(r"WeightsUnpickler error: (.*?)(?: Please use |$)", text, re.M)
    if unpickler:
        detail = unpickler.group(1).strip().rstrip(".")[:120]
        return (
            f"holds objects that are not tensors or plain data ({detail}), so it is not a "
            "noisybench checkpoint (checkpoints are read without running code from them)"
        )
    if "TorchScript" in text:
        return "is a TorchScript model, not a noisybench checkpoint"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    first = first.split(" This is an internal miniz error")[0][:120]
    return f"is corrupt or truncated ({first})"
