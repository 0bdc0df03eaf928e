"""Atomic writes and safe reads: a crash never leaves a half-written file behind, and a
checkpoint can never execute code when it is read (``weights_only=True``)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from noisybench.errors import UserError

__all__ = ["atomic_save_checkpoint", "atomic_write_json", "atomic_write_text", "load_checkpoint"]


def _atomic_replace(path: Path, write: Any, keep_previous: bool = False) -> None:
    """Write through ``write(file_object)`` into a temporary file beside ``path``, flush it to
    disk, then rename it over ``path`` (atomic on POSIX file systems). With
    ``keep_previous`` the file it replaces survives as ``<name>.prev``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            os.replace(path, path.with_name(path.name + ".prev"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    _atomic_replace(Path(path), lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (NaN is written as ``null``)."""
    atomic_write_text(path, json.dumps(_finite(obj), indent=2, sort_keys=False) + "\n")


def _finite(obj: Any) -> Any:
    """Replace float NaN/inf by None so the JSON is standard."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def atomic_save_checkpoint(obj: dict[str, Any], path: str | Path) -> None:
    """Save ``obj`` with ``torch.save`` atomically; the checkpoint it replaces is kept as
    ``<name>.prev`` so one good checkpoint survives even a corrupted newest file."""
    _atomic_replace(Path(path), lambda f: torch.save(obj, f), keep_previous=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`atomic_save_checkpoint` with ``weights_only=True``.

    Raises:
        UserError: the file is missing, truncated or not a noisybench checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; check the run directory")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, foreign objects, ...
        prev = path.with_name(path.name + ".prev")
        hint = (
            f"the previous checkpoint {prev} is kept: move it to {path.name} to resume from it"
            if prev.is_file()
            else "delete it to start over (restart=true moves old files aside)"
        )
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UserError(f"checkpoint {path} is corrupt or truncated ({reason}); {hint}") from exc
    if not isinstance(obj, dict) or "model" not in obj:
        raise UserError(f"{path} is not a noisybench checkpoint (no 'model' entry); move it away")
    return obj
