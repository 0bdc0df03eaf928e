"""A run directory: every file name, the lock, every refusal and every write of one run.

``out_dir/<run_name>`` holds one experiment (its whole config, see :mod:`noisybench.config`):

=====================  ======================================================================
``result.json``        status, config, noise record, history, last/best (atomic, every epoch)
``checkpoint.pt``      exact-resume state (atomic; the one it replaces is ``.prev``)
``noisy_labels.npy``   the noisy training labels (int64)
``tb/``, ``*.csv``     loggers' output
``noisybench.log``     the log (Hydra appends to it); ``.hydra/<time>/`` Hydra's records
``previous/<time>/``   earlier files moved aside by ``restart=true`` (never deleted)
``.lock``              held while a process trains here
=====================  ======================================================================

What a directory holds decides what a run does (:meth:`RunDir.inspect`, reading only): a
finished run with the same experiment is reported, not rerun; a run with a checkpoint resumes
when the experiment and its noisy labels match and is refused, naming the differing keys, when
they do not; anything else starts afresh after moving earlier files aside. Nothing is written
before every input has been read and every object built (:mod:`noisybench.run`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noisybench.config import config_differences, describe_differences
from noisybench.errors import UserError
from noisybench.io import (
    atomic_save_checkpoint,
    atomic_write_json,
    load_checkpoint,
    read_json,
    remove_stale_temporaries,
)

__all__ = [
    "CHECKPOINT_FILE",
    "LABEL_FILE",
    "RESULT_FILE",
    "RunDir",
    "RunState",
    "run_dir_for",
]

log = logging.getLogger("noisybench")

RESULT_FILE = "result.json"
CHECKPOINT_FILE = "checkpoint.pt"
LABEL_FILE = "noisy_labels.npy"
LOCK_FILE = ".lock"
# The files a run writes (and restart=true moves to previous/<time>/). Hydra's own files
# (.hydra/<time>/ per invocation, noisybench.log appended to) stay where they are.
ARTEFACTS = (
    RESULT_FILE,
    CHECKPOINT_FILE,
    CHECKPOINT_FILE + ".prev",
    LABEL_FILE,
    "tb",
    "metrics.csv",
    "predictions",
    "evaluation.json",
    "selected.pt",  # the selected epoch's weights (noisybench.selected)
)
_NAME_MAX = 255  # bytes of one path component on common file systems
_PATH_MAX = 4000  # bytes of a whole path (Linux's PATH_MAX is 4096, with room for file names)


def run_dir_for(out_dir: str | Path, run_name: str) -> Path:
    """``out_dir/run_name``, refusing names that would write anywhere else.

    Raises:
        UserError: an empty ``out_dir`` or ``run_name``, an absolute ``run_name``, a ``..``
            component, or a component longer than the file system allows.
    """
    if not str(out_dir).strip():
        raise UserError("out_dir is empty; set out_dir to a directory, e.g. out_dir=./runs")
    if str(out_dir).startswith("~"):
        # A quoted '~/runs' reaches us unexpanded: it would create a folder named "~" here.
        raise UserError(
            f"out_dir={out_dir} starts with '~', which the shell did not expand (it was "
            f"quoted); give the full path, e.g. out_dir={os.path.expanduser(str(out_dir))}"
        )
    name = str(run_name).strip()
    if not name:
        raise UserError(
            "run_name is empty; leave it unset (one directory per experiment) or give a name, "
            "e.g. run_name=my_run"
        )
    parts = Path(name).parts
    if Path(name).is_absolute() or ".." in parts or any(p in ("", ".") for p in parts):
        raise UserError(
            f"run_name={name} would write outside out_dir; give a relative name without '..', "
            "e.g. run_name=my_run (use out_dir=... to choose where runs go)"
        )
    for part in parts:
        if len(part.encode()) > _NAME_MAX:
            digest = hashlib.sha256(part.encode()).hexdigest()[:10]
            raise UserError(
                f"run_name has a component of {len(part.encode())} bytes ({part[:40]}...), "
                f"longer than the file system's {_NAME_MAX}; give a shorter run_name=..., e.g. "
                f"run_name={part[:40]}-{digest}"
            )
    full = Path(os.path.abspath(Path(out_dir) / name))
    if len(os.fsencode(full)) > _PATH_MAX:
        raise UserError(
            f"the run directory's path is {len(os.fsencode(full))} bytes, longer than the "
            f"file system's {_PATH_MAX}; give a shorter run_name=... or out_dir=..."
        )
    return Path(out_dir) / name


@dataclass
class RunState:
    """What a run directory holds for a config: a finished result to report, a checkpoint to
    resume from, or neither (start afresh)."""

    finished: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None


class RunDir:
    """One run's directory; see the module docstring for its files."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # ------------------------------------------------------------------ names
    @property
    def result_file(self) -> Path:
        return self.path / RESULT_FILE

    @property
    def checkpoint_file(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def previous_checkpoint(self) -> Path:
        return self.path / (CHECKPOINT_FILE + ".prev")

    @property
    def label_file(self) -> Path:
        return self.path / LABEL_FILE

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tb"

    def file(self, name: str) -> Path:
        """A file of this run (for loggers): ``name`` must be a plain file name."""
        if Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"not a plain file name: {name!r}")
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ reading
    def probe_writable(self) -> None:
        """Refuse a run directory that cannot be created or written, touching nothing.

        Raises:
            UserError: an ancestor is a file, or the nearest existing ancestor is not writable.
        """
        probe = self.path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            raise UserError(
                f"cannot create the run directory {self.path}: {probe} is a file; "
                "choose another out_dir=... or run_name=..."
            )
        try:
            virtual = os.statvfs(probe).f_blocks == 0  # /proc, /sys, cgroup: no storage
        except OSError:
            virtual = False
        if virtual:
            raise UserError(
                f"cannot create the run directory {self.path}: {probe} is on a virtual file "
                "system (like /proc or /sys) that holds no files; choose another out_dir=..."
            )
        if not os.access(probe, os.W_OK | os.X_OK):
            raise UserError(
                f"cannot write to {probe} for the run directory {self.path}; "
                "choose a writable out_dir=..."
            )

    def read_result(self) -> dict[str, Any] | None:
        """The result file when it is a readable JSON object (else None)."""
        result = read_json(self.result_file)
        return result if isinstance(result, dict) else None

    def holds_run(self) -> bool:
        return self.checkpoint_file.exists() or self.previous_checkpoint.exists()

    def refuse_other_config(
        self, saved: Mapping[str, Any], current: Mapping[str, Any], what: str
    ) -> None:
        """Raise a one-line :class:`UserError` naming the differing keys when the ``what``
        (finished run, run, checkpoint) here was made with another experiment."""
        diff = config_differences(saved, current)
        if diff:
            raise UserError(
                f"the {what} in {self.path} was made with a different config (differing keys: "
                f"{describe_differences(diff, saved, current)}); use another run_name=... or "
                "pass restart=true to start over (old files go to previous/)"
            )

    def check_existing(self, resolved: Mapping[str, Any]) -> dict[str, Any] | None:
        """Compare the run already here (if any) with the ``resolved`` config, reading only
        the result file. Returns the result of a finished run of the same experiment (to
        report, not rerun), or None.

        Raises:
            UserError: the directory holds a finished run or a checkpoint of another
                experiment (naming the differing keys).
        """
        result = self.read_result()
        if result is None:  # missing, unreadable or not a JSON object: the checkpoint decides
            return None
        status, config = result.get("status"), result.get("config")
        if status == "finished" or self.holds_run():
            what = "finished run" if status == "finished" else "run"
            if not isinstance(config, dict):
                raise UserError(
                    f"{self.result_file} holds no config, so the {what} there cannot be "
                    "compared with this one; move the file away, or pass restart=true to start "
                    "over (old files go to previous/)"
                )
            self.refuse_other_config(config, resolved, what)
        # A finished result whose summary is damaged is not reported: the run resumes from
        # its checkpoint (already at the last epoch), which rewrites the result.
        return result if status == "finished" and _has_summary(result) else None

    def inspect(self, resolved: Mapping[str, Any], restart: bool) -> RunState:
        """Decide what this directory holds for ``resolved``, reading only.

        Raises:
            UserError: another experiment's run, a corrupt checkpoint (the ``.prev`` one is
                named), or a missing newest checkpoint next to a ``.prev`` one.
        """
        if restart or not self.path.is_dir():
            return RunState()
        finished = self.check_existing(resolved)
        if finished is not None:
            return RunState(finished=finished)
        if self.checkpoint_file.exists() or self.checkpoint_file.is_symlink():
            ckpt = load_checkpoint(self.checkpoint_file)
            saved = ckpt.get("config")
            self.refuse_other_config(
                saved if isinstance(saved, dict) else {}, resolved, "checkpoint"
            )
            return RunState(checkpoint=ckpt)
        if self.previous_checkpoint.exists():
            raise UserError(
                f"{self.path} holds {self.previous_checkpoint.name} but no "
                f"{CHECKPOINT_FILE} (a checkpoint write was cut short); rename "
                f"{self.previous_checkpoint.name} to {CHECKPOINT_FILE} to resume from it, or "
                "pass restart=true to start over (old files go to previous/)"
            )
        return RunState()

    def finished_message(self, result: Mapping[str, Any]) -> str:
        """One line reporting a finished run."""
        last, best = result.get("last") or {}, result.get("best") or {}

        def acc(entry: Mapping[str, Any]) -> str:
            value = entry.get("test/acc") if isinstance(entry, Mapping) else None
            return f"{value:.4f}" if isinstance(value, int | float) else "n/a"

        epoch = best.get("epoch") if isinstance(best, Mapping) else None
        message = (
            f"{self.path} already finished: last-epoch test acc {acc(last)}, best {acc(best)} "
            f"at epoch {epoch} (selected on the test set); pass restart=true to run it again"
        )
        problem = self.label_problem(result)
        return message if problem is None else f"{message}; warning: {problem}"

    def label_problem(self, result: Mapping[str, Any]) -> str | None:
        """What is wrong with the label file of the finished run ``result`` (missing,
        unreadable, or labels whose hash differs from the result's noise record), or None."""
        noise = result.get("noise")
        sha = noise.get("sha256") if isinstance(noise, Mapping) else None
        if not isinstance(sha, str) or self.labels_match(sha):
            return None
        state = "is missing" if not self.label_file.exists() else "is damaged"
        return (
            f"{self.label_file.name} {state} (unreadable, or its labels' sha256 is not "
            f"{sha[:12]}... as result.json records); the results stand, but to get the noisy "
            "labels back run again with restart=true (old files go to previous/)"
        )

    # ------------------------------------------------------------------ writing
    def prepare(self) -> None:
        """Create the directory and check it takes files.

        Raises:
            UserError: it cannot be created or written.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.path, prefix=".write_test."):
                pass
        except OSError as exc:
            raise UserError(
                f"cannot write to the run directory {self.path} ({exc.strerror}); "
                "choose a writable out_dir=... or run_name=..."
            ) from exc

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the directory (released by the OS even on SIGKILL).

        Raises:
            UserError: another process holds it.
        """
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield
            return
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise UserError(
                    f"another noisybench process is running in {self.path}; wait for it to "
                    "end, or use another run_name=..."
                ) from None
            yield
        finally:
            os.close(fd)

    def move_aside(self) -> Path | None:
        """Move earlier artefacts into ``previous/<timestamp>/`` (never delete)."""
        present = [self.path / name for name in ARTEFACTS if (self.path / name).exists()]
        if not present:
            return None
        target = self.path / "previous" / time.strftime("%Y%m%d-%H%M%S")
        suffix = 0
        while target.exists():
            suffix += 1
            target = target.with_name(f"{target.name.split('.')[0]}.{suffix}")
        target.mkdir(parents=True)
        for path in present:
            shutil.move(str(path), str(target / path.name))
        return target

    def clean_temporaries(self) -> None:
        """Remove what a killed writer left (call with the lock held)."""
        remove_stale_temporaries(self.path, (CHECKPOINT_FILE, RESULT_FILE, LABEL_FILE))

    def save_labels(self, labels: Any) -> None:
        """Write the noisy labels (int64 ``.npy``) atomically."""
        from noisybench.data.noise import save_labels

        save_labels(self.label_file, labels)

    def labels_match(self, sha256: str) -> bool:
        """Whether ``noisy_labels.npy`` is readable and its labels have the noise record's
        hash ``sha256``."""
        import numpy as np

        from noisybench.data.noise import label_hash

        try:
            labels = np.load(self.label_file, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return False
        return (
            isinstance(labels, np.ndarray)
            and labels.dtype.kind in "iu"
            and label_hash(labels) == sha256
        )

    def write_result(self, result: Mapping[str, Any]) -> None:
        """Write ``result.json`` atomically."""
        atomic_write_json(self.result_file, dict(result))

    def save_checkpoint(self, state: Mapping[str, Any], before_replace: Any = None) -> None:
        """Write ``checkpoint.pt`` atomically, keeping the one it replaces as ``.prev``."""
        atomic_save_checkpoint(dict(state), self.checkpoint_file, before_replace=before_replace)


def _has_summary(result: Mapping[str, Any]) -> bool:
    """A finished result has a history list and last/best entries that are mappings or null."""
    return isinstance(result.get("history"), list) and all(
        result.get(k) is None or isinstance(result.get(k), Mapping) for k in ("last", "best")
    )


def check_saved_config(config: Any, where: str | Path) -> None:
    """Refuse a config read back from a run directory (``result.json``'s ``config``) that
    cannot be rebuilt safely: code outside the allow-list (:mod:`noisybench.safety`, checked
    before anything is imported) or a group that is not a mapping with a ``_target_``
    string. ``where`` names the file in the one-line error."""
    from noisybench.safety import check_tree

    if not isinstance(config, Mapping):
        raise UserError(f"{where}: its config is not a mapping; this is not a noisybench run")
    try:
        check_tree(config)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    for group in ("dataset", "model", "method"):
        node = config.get(group)
        if not isinstance(node, Mapping):
            raise UserError(
                f"{where}: config.{group} is missing or not a mapping; the file is damaged, "
                "rerun the experiment"
            )
    reader = config["dataset"].get("reader")
    for key, node in (
        ("dataset.reader", reader),
        ("model", config["model"]),
        ("method", config["method"]),
    ):
        if not isinstance(node, Mapping) or not isinstance(node.get("_target_"), str):
            raise UserError(
                f"{where}: config.{key} has no _target_ string; the file is damaged, rerun "
                "the experiment"
            )
    for key in ("epochs", "seed"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(
                f"{where}: config.{key}={value!r} is not an integer; the file is damaged, "
                "rerun the experiment"
            )


def read_evaluation(path: str | Path) -> dict[str, Any]:
    """The ``evaluation.json`` already in a run directory ({} when there is none), refused in
    one line when it is damaged: it is then neither read further nor overwritten."""
    path = Path(path)
    if not path.exists():
        return {}
    content = read_json(path)
    damaged = not isinstance(content, dict) or any(
        not isinstance(content.get(key) or {}, dict) for key in ("metrics", "suites")
    )
    if damaged:
        raise UserError(
            f"{path} is damaged (not a JSON object with 'metrics' and 'suites' objects); move "
            "it away to keep it, then run the evaluation again"
        )
    return content


def check_label_array(labels: Any, n: int, k: int, path: str | Path) -> Any:
    """The noisy labels read back from a run directory, as int64, refused in one line when
    they cannot be this run's: not integers, not ``n`` of them, or outside ``0..k-1``."""
    import numpy as np

    arr = np.asarray(labels)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise UserError(
            f"{path} holds {arr.dtype} {tuple(arr.shape)}, not a 1-D integer array of labels; "
            "the run directory is damaged, rerun the experiment (restart=true)"
        )
    if arr.shape[0] != n:
        raise UserError(
            f"{path} holds {arr.shape[0]} labels for {n} training samples; the run directory "
            "is damaged or belongs to other data, rerun the experiment (restart=true)"
        )
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= k):
        raise UserError(
            f"{path} has labels outside 0..{k - 1} (from {int(arr.min())} to {int(arr.max())}); "
            "the run directory is damaged, rerun the experiment (restart=true)"
        )
    return arr.astype(np.int64)
