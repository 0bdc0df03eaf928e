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

from noisybench.errors import UserError

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
    from noisybench.errors import UserError
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
