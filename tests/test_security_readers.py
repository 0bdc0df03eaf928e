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
    import os
    import sys
    from noisybench.data.cifar import read_batch
    from noisybench.errors import UserError

    assert not any(m.startswith("numpy.f2py") for m in sys.modules)
    for path in sys.argv[1:]:
        # each file in a fresh child of this interpreter: its sys.modules shows what that
        # file's reading imported (and the reader's own imports are paid once)
        sys.stdout.flush()
        if os.fork() == 0:
            try:
                read_batch(path)
                verdict = "READ"
            except UserError as exc:
                verdict = f"REFUSED {exc}"
            imported = any(m.startswith("numpy.f2py") for m in sys.modules)
            print(f"{verdict}\t{'IMPORTED' if imported else 'CLEAN'}", flush=True)
            os._exit(0)
        os.wait()
    """
)

PAYLOADS = {
    # The attack: a module inside numpy whose import starts a program, under a name the old
    # prefix rule admitted (it checked the module's first component and the name).
    "f2py-main-dtype": b"cnumpy.f2py.__main__\ndtype\n(S'u1'\ntR.",
    "f2py-main-main": b"cnumpy.f2py.__main__\nmain\n)R.",
    "f2py-run-main": b"cnumpy.f2py\nrun_main\n(]tR.",
    "os-system": b"cos\nsystem\n(S'true'\ntR.",
    "numpy-module": b"cnumpy\n_core\n.",  # a module object is not one of the pairs either
}


@pytest.fixture(scope="module")
def payload_verdicts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    """Each payload read in its own forked child of one interpreter (so that ``sys.modules``
    shows what reading it imported): ``{payload id: (path, output line)}``."""
    root = tmp_path_factory.mktemp("payloads")
    paths = {}
    for name, payload in PAYLOADS.items():
        paths[name] = root / name / "data_batch_1"
        paths[name].parent.mkdir()
        paths[name].write_bytes(payload)
    proc = subprocess.run(
        [sys.executable, "-c", PAYLOAD_CHECK, *map(str, paths.values())],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == len(paths), proc.stdout
    return {name: (str(paths[name]), line) for name, line in zip(paths, lines, strict=True)}


@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_cifar_unpickler_imports_nothing_it_does_not_allow(
    payload_verdicts: dict[str, tuple[str, str]], payload: str
) -> None:
    """Issue 20 item 2; in a subprocess, so that ``sys.modules`` shows what was imported."""
    path, line = payload_verdicts[payload]
    verdict, imported = line.rsplit("\t", 1)
    assert imported == "CLEAN", line
    assert verdict.startswith("REFUSED") and path in verdict, line
    assert "unexpected object" in verdict


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


# ------------------------------------------------------------------------------ image folder
def _folder(root: Path) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for j in range(2):
                Image.fromarray(np.full((6, 6, 3), 40 * j + 10, np.uint8)).save(d / f"{j}.png")
    return root


def _scan_error(root: Path) -> str:
    from noisybench.data import fingerprint as fp
    from noisybench.errors import UserError

    fp._SCANS.clear()
    with pytest.raises(UserError) as info:
        fp.scan_folder(root)
    return str(info.value)


@pytest.mark.parametrize(
    ("name", "make", "expect"),
    [
        ("empty.jpg", lambda p: p.write_bytes(b""), "empty (0 bytes)"),
        (
            "dangling.jpg",
            lambda p: p.symlink_to(p.parent / "nowhere.jpg"),
            "a symbolic link to nothing",
        ),
        ("loop.jpg", lambda p: p.symlink_to(p), "a symbolic link loop"),
        ("fifo.jpg", lambda p: __import__("os").mkfifo(p), "a FIFO"),
        ("dir.jpg", lambda p: p.mkdir(), "a folder"),
    ],
)
def test_folder_scan_refuses_what_cannot_be_an_image(
    tmp_path: Path, name: str, make, expect: str
) -> None:
    """Issue 20 item 4, the part seen without decoding: one line naming the file."""
    root = _folder(tmp_path / "imgs")
    make(root / "train" / "b" / name)
    message = _scan_error(root)
    assert f"{root / 'train' / 'b' / name} is {expect}" in message, message
    assert "remove or replace it" in message and "\n" not in message


def test_folder_scan_names_a_non_utf8_file_printably(tmp_path: Path) -> None:
    import os

    root = _folder(tmp_path / "imgs")
    raw = os.fsencode(root / "train" / "a") + b"/bad\xff\x1b[2J.jpg"
    with open(raw, "wb") as f:
        f.write(b"x")
    message = _scan_error(root)
    assert "bad\\xff" in message and "its name is not UTF-8" in message
    assert "\x1b" not in message  # no terminal escape reaches the screen


def test_folder_scan_skips_hidden_and_other_files_and_counts_them(tmp_path: Path) -> None:
    from noisybench.data import fingerprint as fp

    root = _folder(tmp_path / "imgs")
    (root / "train" / "a" / "._0.png").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble
    (root / "train" / "a" / ".DS_Store").write_bytes(b"x")
    (root / "train" / "b" / "notes.txt").write_text("hello")
    (root / "train" / ".ipynb_checkpoints").mkdir()  # a hidden folder is not a class
    fp._SCANS.clear()
    scan = fp.scan_folder(root)
    assert scan.skipped == 3
    assert scan.classes == ["a", "b"]
    assert [Path(f).name for f in scan.train_files] == ["0.png", "1.png", "0.png", "1.png"]


def _png16(path: Path, values: np.ndarray, color: bool) -> None:
    """A 16-bit PNG written by hand (IHDR bit depth 16; colour type 2 RGB or 0 grey), so the
    test does not depend on how an encoder converts."""
    import struct
    import zlib

    h, w = values.shape[:2]
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", w, h, 16, 2 if color else 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("color", [True, False], ids=["rgb16", "grey16"])
@pytest.mark.parametrize("decoder", ["pil", "torchvision"])
def test_16_bit_pngs_decode_to_the_high_byte(tmp_path: Path, decoder: str, color: bool) -> None:
    """Issue 20 item 5. The rule is PIL's for 16-bit RGB PNGs: value >> 8 (hand-computed
    below). torchvision gave uint16 (pixels up to 257x too large); PIL's grey-16 conversion
    clipped every value above 255 to 255."""
    import warnings

    from noisybench.data.folder import decode_file

    values16 = np.array([[0, 255, 256, 257, 32767, 32768, 65279, 65535]], dtype=np.uint16)
    expected = [0, 0, 1, 1, 127, 128, 254, 255]  # v >> 8, by hand
    data = np.stack([values16] * 3, axis=-1) if color else values16
    path = tmp_path / "x.png"
    _png16(path, data, color)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = decode_file(str(path), decoder)
    assert image.dtype.is_floating_point is False and str(image.dtype) == "torch.uint8"
    assert tuple(image.shape) == (3, 1, 8)
    for channel in range(3):
        assert image[channel, 0].tolist() == expected


@pytest.mark.parametrize("decoder", ["pil", "torchvision"])
def test_decode_errors_and_bombs_name_the_file(tmp_path: Path, decoder: str) -> None:
    import struct
    import zlib

    from noisybench.data.folder import MAX_PIXELS, DecodeError, decode_file

    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    with pytest.raises(DecodeError, match="is not a decodable image"):
        decode_file(str(text), decoder)
    # a PNG header announcing 20000 x 20000 pixels (400 M > the limit), no real pixel data
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    body = b"IHDR" + header
    bomb = tmp_path / "bomb.png"
    pixels = zlib.compress(b"\x00" * 64)  # far too few: the limit must refuse before decoding
    idat = struct.pack(">I", len(pixels)) + b"IDAT" + pixels
    idat += struct.pack(">I", zlib.crc32(b"IDAT" + pixels))
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    ihdr = struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body))
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr + idat + iend)
    with pytest.raises(DecodeError, match="20000 x 20000 pixels, more than the limit"):
        decode_file(str(bomb), decoder)
    assert MAX_PIXELS == 89_478_485


def test_a_worker_decode_error_reaches_the_run_as_one_line_naming_the_file(tmp_path: Path) -> None:
    """Issue 20 item 4: a bad file found by a DataLoader worker was a 40-56-line traceback."""
    import torch

    from noisybench.data.folder import FolderLoader, load_folder
    from noisybench.errors import UserError

    root = _folder(tmp_path / "imgs")
    bad = root / "train" / "b" / "1.png"
    bad.write_bytes(b"\x89PNG but truncated")
    data = load_folder(str(root), image_size=4, resize=4)
    loader = FolderLoader(
        data, torch.zeros(4, dtype=torch.long), 2, ["weak"], seed=0, device="cpu", workers=1
    )
    with pytest.raises(UserError) as info:
        for _ in loader.epoch(0):
            pass
    message = str(info.value)
    assert f"image {bad} is not a decodable image" in message and "\n" not in message
    assert "resumes from its last checkpoint" in message


# ------------------------------------------------------------------------------ arrays
def _npz(path: Path, **overrides: np.ndarray) -> Path:
    arrays = {
        "train_images": np.zeros((6, 4, 4), np.uint8),
        "train_labels": np.array([0, 1, 2, 0, 1, 2]),
        "test_images": np.zeros((3, 4, 4), np.uint8),
        "test_labels": np.array([0, 1, 2]),
    }
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("overrides", "expect"),
    [
        (
            {"test_images": np.zeros((0, 4, 4), np.uint8), "test_labels": np.zeros(0, np.int64)},
            "test_images is empty",
        ),
        (
            {
                "train_images": np.zeros((6, 1, 1), np.uint8),
                "test_images": np.zeros((3, 1, 1), np.uint8),
            },
            "images are 1x1 pixels",
        ),
        (
            {
                "train_images": np.zeros((6, 0, 0), np.uint8),
                "test_images": np.zeros((3, 0, 0), np.uint8),
            },
            "images are 0x0 pixels",
        ),
        (
            {"train_labels": np.array([0, 1, 2, 0, 1, 99_999])},
            "largest label in train_labels is 99999 but only 4 distinct",
        ),
    ],
    ids=["empty-test", "1x1", "0x0", "stray-label"],
)
def test_arrays_degenerate_sets_are_one_line(tmp_path: Path, overrides: dict, expect: str) -> None:
    """Issue 20 item 10 (tracebacks; the stray label made K = 100,000 and a 74.5 GiB array)."""
    from noisybench.data.arrays import load_arrays
    from noisybench.errors import UserError

    with pytest.raises(UserError, match=expect):
        load_arrays(str(_npz(tmp_path / "d.npz", **overrides)))


def test_arrays_stats_are_exact_and_chunked() -> None:
    """Hand case: one channel with pixels {0, 255} half and half: mean 0.5, std 0.5; a
    second channel constant 51: mean 0.2, std 0."""
    from noisybench.data.arrays import channel_stats

    images = np.zeros((10, 2, 3, 3), np.uint8)
    images[::2, 0] = 255
    images[:, 1] = 51
    for chunk in (1, 9, 18, 1 << 22):  # chunks of 1 image up to all at once
        mean, std = channel_stats(images, chunk=chunk)
        np.testing.assert_allclose(mean, [0.5, 0.2], atol=1e-12)
        np.testing.assert_allclose(std, [0.5, 0.0], atol=1e-12)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (37, 3, 5, 7), dtype=np.uint8)
    mean, std = channel_stats(images, chunk=100)
    pixels = images.astype(np.float64) / 255.0  # numpy's two-pass formula, as a second reference
    np.testing.assert_allclose(mean, pixels.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, pixels.std(axis=(0, 2, 3)), rtol=1e-9)
