"""Security and bad files, round three (issue 20, items 2, 4, 5, 10): what the data readers
accept. Unpicklers allow exact ``(module, name)`` pairs and refuse before importing anything;
the image folder refuses what can be seen without decoding at scan time and names the file of a
decode error; 16-bit PNGs give the same 8-bit pixels with both decoders; the arrays reader
refuses degenerate sets in one line and computes its statistics in bounded memory.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

# ------------------------------------------------------------------------------ CIFAR pickles
BATCH = {
    b"batch_label": b"training batch 1 of 5",
    b"labels": [3, 1],
    b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072) % 251,
    b"filenames": [b"a.png", b"b.png"],
}


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_of_every_protocol_still_read(tmp_path: Path, protocol: int) -> None:
    from noisybench.data.cifar import read_batch

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(BATCH, protocol=protocol))
    out = read_batch(path)
    assert out["labels"] == [3, 1] and out["filenames"] == ["a.png", "b.png"]
    np.testing.assert_array_equal(out["data"], BATCH[b"data"])


def test_numpy_1_names_still_read(tmp_path: Path) -> None:
    """The official files were written by NumPy 1: ``numpy.core.multiarray._reconstruct``."""
    from noisybench.data.cifar import read_batch

    raw = pickle.dumps(BATCH, protocol=2)
    assert b"numpy._core.multiarray\n_reconstruct" in raw  # protocol 2 names globals as text
    path = tmp_path / "data_batch_1"
    path.write_bytes(raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    np.testing.assert_array_equal(read_batch(path)["data"], BATCH[b"data"])


PAYLOAD_CHECK = textwrap.dedent(
    """
    import sys
    from noisybench.data.cifar import read_batch
        try:
        read_batch(sys.argv[1])
    except UserError as exc:
        print("REFUSED", exc)
    print("IMPORTED" if any(m.startswith("numpy.f2py") for m in sys.modules) else "CLEAN")
    """
)


@pytest.mark.parametrize(
    "payload",
    [
        # The attack: a module inside numpy whose import starts a program, under a name the
        # old prefix rule admitted (it checked the module's first component and the name).
        b"cnumpy.f2py.__main__\ndtype\n(S'u1'\ntR.",
        b"cnumpy.f2py.__main__\nmain\n)R.",
        b"cnumpy.f2py\nrun_main\n(]tR.",
        b"cos\nsystem\n(S'true'\ntR.",
        b"cnumpy\n_core\n.",  # a module object is not one of the pairs either
    ],
    ids=["f2py-main-dtype", "f2py-main-main", "f2py-run-main", "os-system", "numpy-module"],
)
def test_cifar_unpickler_imports_nothing_it_does_not_allow(tmp_path: Path, payload: bytes) -> None:
    """Issue 20 item 2; in a subprocess, so that ``sys.modules`` shows what was imported."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(payload)
    proc = subprocess.run(
        [sys.executable, "-c", PAYLOAD_CHECK, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "CLEAN", proc.stdout
    assert lines[0].startswith("REFUSED") and str(path) in lines[0], proc.stdout
    assert "unexpected object" in lines[0]


# ------------------------------------------------------------------------------ batch of one
def _ident(x):
    return x


@pytest.mark.parametrize(
    ("n", "b", "sizes"), [(23, 11, [11, 12]), (1300, 1299, [1300]), (23, 5, [5, 5, 5, 5, 3])]
)
def test_a_last_batch_of_one_is_folded_into_the_one_before(
    n: int, b: int, sizes: list[int]
) -> None:
    """Issue 20 item 6: N mod B = 1 made a last batch of one sample, which BatchNorm cannot
    normalise in training mode. Hand-worked sizes: 23 = 11 + 12; 1300 = one batch of 1300;
    23 mod 5 = 3 is left alone."""
    import torch

    from noisybench.data.loader import DeviceLoader

    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1)
    labels = torch.arange(n) % 3
    loader = DeviceLoader(images, labels, b, {"id": _ident}, seed=4)
    assert len(loader) == len(sizes)
    batches = list(loader.epoch(2))
    assert [x.size for x in batches] == sizes
    assert sorted(torch.cat([x.idx for x in batches]).tolist()) == list(range(n))
    # exact resume: the last step alone is the same batch
    again = list(loader.epoch(2, start_step=len(sizes) - 1))
    assert again[0].idx.tolist() == batches[-1].idx.tolist()
    bn = torch.nn.BatchNorm1d(1).train()
    for x in batches:
        bn(x.views["id"].float().view(-1, 1))  # raised "Expected more than 1 value" before


def test_two_processes_never_get_a_single_sample_batch() -> None:
    """With 2 processes a last global batch of 2 or 3 gave one process one sample."""
    import torch

    from noisybench.data.loader import DeviceLoader

    n, b = 22, 10  # rest 2: shares (1, 1) before; now the last batch holds 12 -> (6, 6)
    images = torch.zeros(n, 1, 1, 1, dtype=torch.uint8)
    labels = torch.zeros(n, dtype=torch.long)
    shares = [
        [
            x.size
            for x in DeviceLoader(images, labels, b, {"id": _ident}, 0, rank=r, world_size=2).epoch(
                0
            )
        ]
        for r in (0, 1)
    ]
    assert shares == [[5, 6], [5, 6]]


@pytest.mark.cli
def test_batch_size_leaving_one_sample_trains(cli, tmp_path: Path) -> None:
    """The issue's command: 1,300 digits training images, batch_size=1299."""
    from conftest import read_result

    proc = cli(f"out_dir={tmp_path}", "run_name=one", "method=ce", "epochs=1", "batch_size=1299")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = read_result(tmp_path / "one")
    assert result["status"] == "finished" and len(result["history"]) == 1
