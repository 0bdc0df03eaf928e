"""The bad-input matrix: every row is a command a user could type, each must end in one line
``noisybench: error: ...`` that names the problem and says what to do, a non-zero exit status,
no traceback, and an earlier finished run left exactly as it was.

Every row targets the run directory of a finished run (``run_name=target``) *with*
``restart=true``: the strongest case, a user asking to start over, where bad input must still
be refused before anything is moved or written. Each row gets its own copy of that finished
run, so the rows run side by side.
"""

from __future__ import annotations

import pickle
import shutil
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import CLI, assert_only_hydra_added, error_line, read_result, snapshot

TRAIN_SIZE = 1300  # quickstart digits: 1,797 images minus 497 test images
CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")


@dataclass(frozen=True)
class Case:
    """One bad command: overrides (``{name}`` is replaced by the path of a prepared input)
    and fragments its error line must contain (what is wrong, what to do)."""

    id: str
    overrides: tuple[str, ...]
    expect: tuple[str, ...]


CASES = [
    # unknown names (a config group option that does not exist)
    Case("unknown-method", ("method=nope",), ("unknown method 'nope'", "choose one of: bsd")),
    Case("unknown-model", ("model=nope",), ("unknown model 'nope'", "choose one of:")),
    Case("unknown-dataset", ("dataset=nope",), ("unknown dataset 'nope'", "cifar10, cifar100")),
    Case("unknown-noise", ("noise=nope",), ("unknown noise 'nope'", "sym50")),
    Case("unknown-optim", ("optim=nope",), ("unknown optim 'nope'", "sgd_cosine")),
    Case("unknown-experiment", ("experiment=nope",), ("unknown experiment 'nope'", "quickstart")),
    Case("unknown-in-sweep", ("-m", "method=ce,nope"), ("unknown method 'nope'",)),
    Case("unknown-noise-variant", ("noise.variant=nope",), ("noise.variant=nope", "sym_incl")),
    Case("unknown-key", ("foo=1",), ("Could not override 'foo'", "+foo=1")),
    Case("bad-override-syntax", ("epochs=[1",), ("cannot apply the command-line overrides",)),
    Case("sweep-without-m", ("method=ce,bsd",), ("Ambiguous value", "--multirun")),
    # noise rates and maps
    Case("rate-below-0", ("noise.rate=-0.1",), ("noise.rate=-0.1", "[0, 1)", "noise.rate=0.4")),
    Case("rate-1", ("noise.rate=1.0",), ("noise.rate=1.0", "[0, 1)")),
    Case("rate-not-a-number", ("noise.rate=abc",), ("noise.rate=abc", "[0, 1)")),
    Case(
        "asym-without-map",
        ("noise=asym40", "dataset.asym_map=null"),
        ("needs a class map", "dataset digits has none", "set noise.asym_map"),
    ),
    Case(
        "asym-on-tinyimagenet",
        ("dataset=tinyimagenet", "noise=asym40"),
        ("dataset tinyimagenet has none", "noise=sym50"),
    ),
    Case(
        "asym-unknown-map",
        ("noise=asym40", "noise.asym_map=nope"),
        ("asymmetric map nope is unknown", "cifar10_tanaka"),
    ),
    Case("noise-seed-negative", ("noise.seed=-2",), ("noise.seed=-2", "non-negative integer")),
    # label files
    Case(
        "label-file-missing",
        ("noise.label_file={missing}",),
        ("does not exist", "noise.label_file=null"),
    ),
    Case(
        "label-file-wrong-length",
        ("noise.label_file={short}",),
        ("holds shape (10,)", f"has {TRAIN_SIZE} samples", "use the label file saved for"),
    ),
    Case(
        "label-file-class-out-of-range",
        ("noise.label_file={out_of_range}",),
        ("must lie in [0, 10)", "[0, 10]"),
    ),
    Case("label-file-float", ("noise.label_file={floats}",), ("must be integers", "class indices")),
    Case(
        "label-file-corrupt",
        ("noise.label_file={corrupt_npy}",),
        ("is not a readable .npy array", "regenerate it"),
    ),
    # dataset files
    Case(
        "cifar-missing",
        ("dataset=cifar10", "data_dir={empty_dir}"),
        ("CIFAR-10 not found", "dataset.reader.download=true", "point data_dir"),
    ),
    Case(
        "cifar-corrupt-md5",
        ("dataset=cifar10", "data_dir={bad_cifar}"),
        ("data_batch_1 is corrupt (md5", "download again"),
    ),
    Case(
        "cifar-truncated-pickle",
        ("dataset=cifar10", "data_dir={bad_cifar}", "dataset.reader.verify=false"),
        ("data_batch_1 is truncated or not a CIFAR pickle", "download again"),
    ),
    # output directory
    Case(
        "out-dir-under-a-file",
        ("out_dir={a_file}/runs",),
        ("cannot create the run directory", "is a file", "choose another out_dir"),
    ),
    Case(
        "sweep-out-dir-is-a-file",
        ("-m", "out_dir={a_file}"),
        ("job 0 of the sweep", "is a file", "choose another out_dir"),
    ),
    Case("out-dir-empty", ("out_dir=",), ("out_dir is empty", "out_dir=./runs")),
    Case("run-name-empty", ("run_name=",), ("run_name is empty", "run_name=my_run")),
    Case(
        "run-name-escapes",
        ("run_name=../../x",),
        ("run_name=../../x would write outside out_dir", "without '..'"),
    ),
    Case("run-name-absolute", ("run_name=/tmp/x",), ("would write outside out_dir",)),
    Case(
        "run-name-escapes-in-sweep",
        ("-m", "run_name=ok,../x"),
        ("job 1 of the sweep", "run_name=../x would write outside out_dir"),
    ),
    Case(
        "run-name-too-long",
        ("run_name=" + "a" * 300,),
        ("component of 300 bytes", "longer than the file system's 255", "shorter run_name"),
    ),
    # a required config group left empty
    Case("method-null", ("method=null",), ("method=null leaves the run without a method", "bsd")),
    Case("dataset-null", ("dataset=null",), ("without a dataset", "cifar10")),
    Case("method-deleted", ("~method",), ("~method leaves the run without a method",)),
    # numbers of epochs, batch sizes, seeds, threads
    Case("seed-2-to-the-64", ("seed=18446744073709551616",), ("below 2**63",)),
    Case("seed-2-to-the-63", ("seed=9223372036854775808",), ("below 2**63",)),
    Case("epochs-negative", ("epochs=-1",), ("epochs=-1 is invalid", "positive integer")),
    Case("epochs-zero", ("epochs=0",), ("epochs=0 is invalid", "positive integer")),
    Case("epochs-not-a-number", ("epochs=abc",), ("epochs=abc is invalid",)),
    Case(
        "batch-larger-than-dataset",
        ("batch_size=5000",),
        (f"batch_size=5000 is larger than the {TRAIN_SIZE} training images", "at most"),
    ),
    Case("batch-zero", ("batch_size=0",), ("batch_size=0 is invalid", "positive integer")),
    Case("eval-batch-zero", ("eval.batch_size=0",), ("eval.batch_size=0 is invalid",)),
    Case("seed-negative", ("seed=-1",), ("seed=-1 is invalid", "non-negative integer")),
    Case("cpu-threads-zero", ("cpu_threads=0",), ("cpu_threads=0 is invalid",)),
    # switches with a fixed set of values
    Case("nonfinite-unknown", ("nonfinite=maybe",), ("nonfinite=maybe", "nonfinite=stop or skip")),
    Case("amp-unknown", ("amp=fp8",), ("amp=fp8", "amp=auto, off, bf16 or fp16")),
    Case("restart-not-boolean", ("restart=flase",), ("restart=flase is not a boolean",)),
    Case("device-unknown", ("device=tpu",), ("device=tpu is not a device", "device=auto")),
    Case("device-mps-absent", ("device=mps",), ("device=mps is not available", "device=cpu")),
    Case("device-meta", ("device=meta",), ("device=meta is not available", "device=cpu")),
    Case(
        "amp-bf16-on-cpu",
        ("device=cpu", "amp=bf16"),
        ("amp=bf16 needs a CUDA device", "amp=auto", "amp=off"),
    ),
    Case("amp-fp16-on-cpu", ("device=cpu", "amp=fp16"), ("amp=fp16 needs a CUDA device",)),
    # values a constructor rejects
    Case(
        "learning-rate-negative",
        ("optim.optimizer.lr=-1",),
        ("optimizer of optim adam_onecycle", "Invalid learning rate: -1", "command line"),
    ),
    Case(
        "method-parameter-out-of-range",
        ("method=bsd", "method.gamma=1.5"),
        ("BSD gamma must be in [0, 1], got 1.5",),
    ),
    Case(
        "ensemble-members-fractional",
        ("method=ensemble", "method.members=1.5"),
        ("method.members=1.5 must be a whole number",),
    ),
    Case("dlb-temperature-nan", ("method=dlb", "method.T=nan"), ("method.T=nan is not a number",)),
    Case(
        "dlb-temperature-inf",
        ("method=dlb", "method.T=inf"),
        ("method.T=inf must be a positive finite number",),
    ),
    Case("learning-rate-nan", ("optim.optimizer.lr=nan",), ("optim.optimizer.lr=nan",)),
    # label files that are not label files
    Case(
        "label-file-is-text",
        ("noise.label_file={text_labels}",),
        ("is a text file (no .npy header)", "numpy.save"),
    ),
    Case(
        "label-file-is-a-directory",
        ("noise.label_file={empty_dir}",),
        ("is a directory, not a file", "noise.label_file"),
    ),
]


def _inputs(root: Path) -> dict[str, Path]:
    """The bad files the rows point at."""
    root.mkdir()
    paths = {name: root / f"{name}.npy" for name in ("short", "out_of_range", "floats")}
    np.save(paths["short"], np.zeros(10, dtype=np.int64))
    labels = np.arange(TRAIN_SIZE, dtype=np.int64) % 10
    labels[7] = 10
    np.save(paths["out_of_range"], labels)
    np.save(paths["floats"], np.zeros(TRAIN_SIZE, dtype=np.float32))
    paths["corrupt_npy"] = root / "corrupt.npy"
    paths["corrupt_npy"].write_bytes(b"\x93NUMPY\x01\x00garbage")
    paths["missing"] = root / "no_such_labels.npy"
    paths["text_labels"] = root / "labels.txt"
    paths["text_labels"].write_text("".join(f"{i % 10}\n" for i in range(TRAIN_SIZE)))
    paths["empty_dir"] = root / "empty"
    paths["empty_dir"].mkdir()
    paths["bad_cifar"] = root / "cifar"
    batches = paths["bad_cifar"] / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    batch = {b"data": np.zeros((4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
    whole = pickle.dumps(batch, protocol=2)
    for name in CIFAR10_FILES:
        (batches / name).write_bytes(whole)
    (batches / "data_batch_1").write_bytes(whole[: len(whole) // 2])  # cut short
    return paths


@pytest.fixture(scope="module")
def outcomes(cli: CLI, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Future]:
    """Run every row, side by side, each against its own copy of a finished run."""
    tmp = tmp_path_factory.mktemp("bad")
    finished = tmp / "finished"
    proc = cli(f"out_dir={finished}", "run_name=target", "epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_result(finished / "target")["status"] == "finished"
    inputs = _inputs(tmp / "inputs")

    def run(case: Case) -> tuple:
        out = tmp / case.id
        shutil.copytree(finished, out)
        (out / "a_file").write_text("a regular file, not a directory\n")
        paths = {**{k: str(v) for k, v in inputs.items()}, "a_file": str(out / "a_file")}
        overrides = [o.format(**paths) for o in case.overrides]
        keys = {o.split("=", 1)[0] for o in overrides}
        target = [f"out_dir={out}", "run_name=target", "epochs=2", "restart=true"]
        target = [t for t in target if t.split("=", 1)[0] not in keys]  # the row's value wins
        before = snapshot(out)
        proc = cli(*target, *overrides)
        return proc, before, snapshot(out), out

    return {case.id: cli.submit(run, case) for case in CASES}


def test_the_matrix_covers_the_issue() -> None:
    """The rows the issue lists are all there (and row names are unique)."""
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    listed = {
        "unknown-method",
        "unknown-model",
        "unknown-dataset",
        "unknown-noise",
        "rate-below-0",
        "rate-1",
        "asym-on-tinyimagenet",
        "label-file-wrong-length",
        "label-file-class-out-of-range",
        "cifar-missing",
        "cifar-truncated-pickle",
        "out-dir-under-a-file",
        "epochs-negative",
        "batch-larger-than-dataset",
        # issue 14
        "run-name-escapes",
        "out-dir-empty",
        "run-name-empty",
        "run-name-too-long",
        "method-null",
        "dataset-null",
        "seed-2-to-the-64",
        "device-mps-absent",
        "device-meta",
        "sweep-out-dir-is-a-file",
        "amp-bf16-on-cpu",
        "ensemble-members-fractional",
        "dlb-temperature-nan",
        "label-file-is-text",
    }
    assert listed <= set(ids), listed - set(ids)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_and_earlier_results_survive(
    case: Case, outcomes: dict[str, Future]
) -> None:
    proc, before, after, out = outcomes[case.id].result()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    line = error_line(proc.stderr)
    for fragment in case.expect:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert_only_hydra_added(before, after, "target/.hydra/")
    assert not (out / "target" / "previous").exists(), "files were moved aside"
