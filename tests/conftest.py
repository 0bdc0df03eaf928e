"""Shared test setup: one torch thread, a helper that runs the command line, and the small
objects many tests build (a method context, a linear model, a batch of random images, a
checkpoint round trip, the repository's composed config).

Import the plain helpers with ``from conftest import tiny_ctx, tiny_batch, ...``; the
fixtures (``cli``, ``restore_torch_globals``, which every test uses) pytest finds by name.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

# The conf/*.yaml files interpolate ${paper:...} and ${nb_variant:...}, resolvers that
# importing noisybench.config registers. Registering them here makes every test that composes
# the config independent of which test happened to import it first (pytest-xdist runs tests
# in any order, in several processes).
import noisybench.config  # noqa: F401

# The tests' models are tiny; on a few shared cores one intra-op thread is much faster.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
KILL_ENV = "NOISYBENCH_TEST_KILL_AT"  # noisybench.engine.TEST_KILL_ENV (test-only hook)
# The quick configuration of the command-line tests: digits + small CNN, no progress bars,
# no loggers (tests that look at TensorBoard ask for logger=[tensorboard]).
QUICK = ("experiment=quickstart", "progress=false", "logger=[]")
TIMING_KEYS = ("epoch_time_s",)
CLI_STARTS = pytest.StashKey[list]()  # command lines an unmarked test tried to start


class CLI:
    """Runs ``python -m noisybench`` in a subprocess, from a scratch working directory.

    Each run pays torch's import (seconds) for a fraction of a second of training, so
    independent runs can be started side by side with :meth:`submit` (one per CPU core).
    """

    def __init__(self, workdir: Path, pool: ThreadPoolExecutor) -> None:
        self.workdir = workdir
        self.pool = pool

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` (which may call this CLI) on a worker thread."""
        return self.pool.submit(fn, *args, **kwargs)

    def __call__(
        self,
        *overrides: str,
        base: Sequence[str] = QUICK,
        env: dict[str, str] | None = None,
        pythonpath: Sequence[Path] = (),
        timeout: float = 300,
    ) -> subprocess.CompletedProcess:
        """Run with ``base`` + ``overrides``; an override replaces the base entry of the same
        key. ``env`` adds environment variables (the kill hook is never inherited)."""
        keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
        args = [b for b in base if b.split("=", 1)[0] not in keys] + list(overrides)
        full_env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
        full_env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), str(ROOT)])
        full_env.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "noisybench", *args],
            cwd=self.workdir,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses the ``cli`` fixture starts ``python -m noisybench``: mark it
    ``cli`` (tests that start Python another way carry ``@pytest.mark.cli`` themselves)."""
    for item in items:
        if "cli" in getattr(item, "fixturenames", ()) and item.get_closest_marker("cli") is None:
            item.add_marker(pytest.mark.cli)


def starts_the_command_line(args: Any) -> bool:
    """Whether ``subprocess.Popen(args)`` starts Python (or torchrun) on this project's code:
    ``-m noisybench[.x]``, ``torch.distributed.run``, or a script or path inside the
    repository (the tests' workers, the package itself). Python processes that torch starts
    for itself (inductor's compile workers, from site-packages) are not the command line."""
    if isinstance(args, (str, bytes, os.PathLike)):
        args = os.fsdecode(args).split()
    argv = [os.fsdecode(a) for a in args]
    if not argv:
        return False
    prog = Path(argv[0]).name
    if not (argv[0] == sys.executable or prog.startswith("python") or prog == "torchrun"):
        return False
    if prog == "torchrun":
        return True
    for arg in argv[1:]:
        if arg in ("noisybench", "torch.distributed.run") or arg.startswith("noisybench."):
            return True
        if str(ROOT) in arg and "site-packages" not in arg:
            return True
    return False


@pytest.fixture(autouse=True)
def _python_processes_need_the_cli_marker(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """A test without the ``cli`` marker may not start the command line (``python -m
    noisybench``, torchrun, a worker script; :func:`starts_the_command_line`): each costs
    seconds of imports, and the quick loop ``pytest -m "not slow and not cli"`` relies on the
    marker to leave them out. This keeps the marker complete as tests are added: the
    unmarked test fails and says so."""
    if request.node.get_closest_marker("cli") is not None:
        yield
        return
    started: list[str] = []
    request.node.stash[CLI_STARTS] = started  # tests/test_conftest.py reads (and clears) it
    original = subprocess.Popen.__init__
    # Only the test's own thread: command lines queued on the cli fixture's pool by an earlier
    # (marked) module may still be starting while this test runs.
    owner = threading.get_ident()

    def guarded(self: subprocess.Popen, args: Any, *rest: Any, **kwargs: Any) -> None:
        if threading.get_ident() == owner and starts_the_command_line(args):
            started.append(str(args)[:200])
            raise RuntimeError(
                f"{request.node.nodeid} starts the command line but is not marked "
                "@pytest.mark.cli; mark it (the quick loop leaves such tests out)"
            )
        original(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)
    yield
    if started:
        pytest.fail(
            f"{request.node.nodeid} started the command line ({started[0]}) without "
            "@pytest.mark.cli; mark it",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CLI]:
    with ThreadPoolExecutor(max_workers=cli_threads()) as pool:
        yield CLI(tmp_path_factory.mktemp("cwd"), pool)


def cli_threads() -> int:
    """Command lines run side by side: one per CPU core, shared among pytest-xdist's worker
    processes (``PYTEST_XDIST_WORKER_COUNT``), but at least 2 per process, so that a worker
    left alone with a module of command lines at the end of the run still fills two cores."""
    cores = os.cpu_count() or 2
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0) or 1
    return max(2, cores // workers)


def write_image_folder(
    root: Path,
    classes: int = 20,
    per_class: int = 10,
    val_per_class: int = 2,
    sides: tuple[int, int] = (40, 90),
    seed: int = 0,
) -> None:
    """Real JPEG files in the ImageFolder layout (``root/{train,val}/n<class>/img<j>.JPEG``,
    random pixels, random sizes within ``sides``). File names sort differently as strings and
    as numbers (img10 < img2), which the stable sample order must follow."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"n{c:03d}"
            folder.mkdir(parents=True)
            for j in range(count):
                h, w = (int(rng.integers(*sides)) for _ in range(2))
                pix = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pix).save(folder / f"img{j}.JPEG", quality=90)


def read_result(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "result.json").read_text())


def epoch_metrics(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every per-epoch number except wall-clock timings."""
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


def snapshot(root: Path) -> dict[str, bytes]:
    """The bytes of every file below ``root``, by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def assert_only_hydra_added(
    before: dict[str, bytes], after: dict[str, bytes], hydra_dir: str = ".hydra/"
) -> None:
    """Every earlier file is byte-identical (Hydra's log may only have grown, by appending);
    new files are Hydra's own (below ``hydra_dir``)."""
    for name, content in before.items():
        assert name in after, f"{name} disappeared"
        if name.endswith("noisybench.log"):
            assert after[name].startswith(content)
        else:
            assert after[name] == content, f"{name} was modified"
    new = {name for name in after if name not in before}
    assert all(name.startswith(hydra_dir) for name in new), new


def error_line(stderr: str) -> str:
    """The one-line error of a failed command, checking it is the only error line and that
    no traceback was printed."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "no error message on stderr"
    errors = [line for line in lines if line.startswith("noisybench: error:")]
    assert errors == [lines[-1]], stderr[-3000:]
    return lines[-1]


def quick_run_dir(
    out: Path, *overrides: str, method: str = "ce", seed: int = 0, noise: str = "sym50"
) -> Path:
    """Where a quickstart run with ``overrides`` (besides ``experiment=quickstart``, method,
    noise and seed) writes: ``out/digits/small_cnn/<noise>/<method>/<variant>/seed<seed>``,
    the variant naming the experiment and the overrides that change it, in sorted order
    (noisybench.config.run_variant; its own test checks the names literally)."""
    from noisybench.config import run_variant

    variant = run_variant(["experiment=quickstart", *overrides])
    return out / "digits" / "small_cnn" / noise / method / variant / f"seed{seed}"


@pytest.fixture(autouse=True)
def restore_torch_globals() -> Iterator[None]:
    """run_experiment and build() set torch's thread count and deterministic mode; undo that
    after every test, so that no test sees another's settings whatever the order (xdist)."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    state = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())  # fmt: skip
    if state != (deterministic, warn_only):  # without importing the compiler when unused
        from noisybench.build import deterministic_algorithms

        deterministic_algorithms(deterministic, warn_only=warn_only)


# A plug-in method outside the package: cross-entropy whose loss is NaN at call number ``at``
# (0-based). Its step counter is a buffer, so it is checkpointed and a resumed run meets the
# NaN again.
NAN_PLUGIN_MODULE = """
import torch

from noisybench.methods.ce import CrossEntropy


class NaNAt(CrossEntropy):
    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = int(at)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def training_step(self, model, batch, epoch):
        out = super().training_step(model, batch, epoch)
        bad = self.calls == self.at
        self.calls += 1
        out.loss = torch.where(bad, torch.full_like(out.loss, float("nan")), out.loss)
        return out
"""


# ------------------------------------------------------------------ small objects for unit tests
def tiny_ctx(
    labels: torch.Tensor,
    num_classes: int = 10,
    *,
    epochs: int = 1,
    steps_per_epoch: int = 1,
    build_model: Callable[[], nn.Module] | None = None,
) -> Any:
    """A CPU :class:`noisybench.method.MethodContext` for the noisy ``labels`` (one sample per
    label)."""
    from noisybench.method import MethodContext

    return MethodContext(
        num_samples=labels.shape[0],
        num_classes=num_classes,
        noisy_labels=labels,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        device=torch.device("cpu"),
        build_model=build_model,
    )


def tiny_model(seed: int | None = None, k: int = 10, in_features: int = 64) -> nn.Module:
    """A linear classifier of flattened ``1x8x8`` images (``in_features`` inputs, ``k``
    classes), initialised after ``torch.manual_seed(seed)`` when ``seed`` is given."""
    if seed is not None:
        torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, k))


def images(n: int, seed: int, shape: Sequence[int] = (1, 8, 8)) -> torch.Tensor:
    """``n`` standard-normal images of ``shape`` from their own generator seeded ``seed``."""
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def tiny_batch(
    idx: Sequence[int] | torch.Tensor,
    labels: torch.Tensor,
    seed: int | None = None,
    views: Sequence[str] = ("weak",),
    shape: Sequence[int] = (1, 8, 8),
    carried: int = 0,
) -> Any:
    """A :class:`noisybench.method.Batch` of samples ``idx`` with their ``labels`` and random
    images for each view: view ``j`` from ``images(n, seed + 100 j)`` when ``seed`` is given,
    else from torch's global RNG (one ``randn`` per view, in order)."""
    from noisybench.method import Batch

    i = torch.as_tensor(idx)
    n = i.numel()
    if seed is None:
        v = {key: torch.randn(n, *shape) for key in views}
    else:
        v = {key: images(n, seed + 100 * j, shape) for j, key in enumerate(views)}
    return Batch(idx=i, target=labels[i], views=v, carried=carried)


def roundtrip(obj: Any) -> Any:
    """A deep copy through ``torch.save`` / ``torch.load(weights_only=True)``, as a checkpoint
    file would give it back."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def compose_config(*overrides: str, config_dir: Path = CONF_DIR) -> Any:
    """The repository's ``config.yaml`` composed by Hydra with ``overrides`` (no run)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose("config", overrides=list(overrides))
