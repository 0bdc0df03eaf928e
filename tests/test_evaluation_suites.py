"""Evaluation suites through their real readers: tiny files written here in each dataset's
exact on-disk layout (SVHN's .mat, CIFAR-10-C and CIFAR-10-P .npy), the corruption functions
against NumPy/SciPy/colorsys re-implementations, and the held-out split."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import pytest
import torch

from noisybench.data.split import holdout_split, split_record
from noisybench.errors import UserError
from noisybench.evaluation import EvalContext, SuiteRunner, build_suites, flat_float, load_suite
from noisybench.evaluation.corruption import CifarCSuite, CorruptionSuite, corrupt, defocus_kernel
from noisybench.evaluation.ood import OODSuite, read_sklearn_patches, read_svhn_test
from noisybench.evaluation.perturbation import CifarPSuite


def _ctx(images, labels, k, data_dir, dataset="cifar10") -> EvalContext:
    return EvalContext(
        num_classes=k,
        test_images=images,
        test_labels=labels,
        data_dir=Path(data_dir),
        device=torch.device("cpu"),
        dataset=dataset,
    )


def brightness_model(images: torch.Tensor) -> torch.Tensor:
    """A 'model' whose logits are fixed functions of the mean brightness: class 0 for dark,
    1 for mid, 2 for bright images (MSP grows with the distance from the class edges)."""
    m = images.float().mean(dim=(1, 2, 3)) / 255.0
    centres = torch.tensor([0.15, 0.5, 0.85])
    return -20.0 * (m[:, None] - centres) ** 2


def _np_brightness_logits(x_nhwc: np.ndarray) -> np.ndarray:
    m = x_nhwc.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0
    return -20.0 * (m[:, None] - np.array([0.15, 0.5, 0.85])) ** 2


# ------------------------------------------------------------------------------------ SVHN
def test_svhn_reader_and_ood_suite(tmp_path) -> None:
    from scipy.io import savemat
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(32, 32, 3, 12), dtype=np.uint8)  # torchvision's layout
    (tmp_path / "svhn").mkdir()
    savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": x, "y": rng.integers(1, 11, (12, 1))})
    images = read_svhn_test(tmp_path)
    assert images.shape == (12, 3, 32, 32) and images.dtype == torch.uint8
    assert images[5, 2, 7, 9] == x[7, 9, 2, 5]

    test = torch.from_numpy(rng.integers(0, 256, (20, 3, 32, 32), dtype=np.uint8))
    out = OODSuite(source="svhn").evaluate(
        brightness_model, _ctx(test, torch.zeros(20), 3, tmp_path)
    )

    # independent: NumPy logits on the NHWC arrays, softmax max, scikit-learn's AUROC
    def msp(logits: np.ndarray) -> np.ndarray:
        e = np.exp(logits - logits.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True)).max(1)

    s_in = msp(_np_brightness_logits(test.permute(0, 2, 3, 1).numpy()))
    s_out = msp(_np_brightness_logits(x.transpose(3, 0, 1, 2)))
    expected = roc_auc_score(np.r_[np.ones(20), np.zeros(12)], np.r_[s_in, s_out])
    assert out["ood/svhn/auroc"] == pytest.approx(expected, abs=1e-9)
    assert out["ood/svhn/n_out"] == 12


def test_svhn_missing_and_corrupt(tmp_path) -> None:
    with pytest.raises(UserError, match=r"test_32x32\.mat is missing") as info:
        read_svhn_test(tmp_path)
    assert "\n" not in str(info.value) and "torchvision.datasets.SVHN" in str(info.value)
    (tmp_path / "svhn").mkdir()
    (tmp_path / "svhn" / "test_32x32.mat").write_bytes(b"not a mat file")
    with pytest.raises(UserError, match="not a readable SVHN"):
        read_svhn_test(tmp_path)


def test_sklearn_patches_are_pooled_photo_tiles() -> None:
    from sklearn.datasets import load_sample_images

    patches = read_sklearn_patches((8, 8), channels=1, scale=4)
    china = np.asarray(load_sample_images().images[0], dtype=np.float64)  # (427, 640, 3)
    grey = china.mean(axis=2)
    # the tile in row 1, column 2 of the first photo: pixels 32..63 x 64..95 before pooling
    block = grey[32:64, 64:96].reshape(8, 4, 8, 4).mean(axis=(1, 3))
    per_row = 640 // 4 // 8
    got = patches[1 * per_row + 2, 0].numpy()
    assert patches.shape == ((427 // 4 // 8) * per_row * 2, 1, 8, 8)
    assert np.abs(got.astype(np.float64) - block).max() <= 0.5 + 1e-4  # rounding to uint8


def test_ood_bad_source() -> None:
    with pytest.raises(UserError, match="unknown source"):
        OODSuite(source="mnist")
    with pytest.raises(UserError, match="needs path"):
        OODSuite(source="npy")


# ------------------------------------------------------------------------------- CIFAR-10-C
def _write_cifar_c(folder: Path, names: list[str], m: int, rng) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True)
    arrays = {}
    for name in names:
        arrays[name] = rng.integers(0, 256, (5 * m, 32, 32, 3), dtype=np.uint8)
        np.save(folder / f"{name}.npy", arrays[name])
    labels = rng.integers(0, 3, 5 * m)
    np.save(folder / "labels.npy", labels)
    arrays["labels"] = labels
    return arrays


def test_cifar_c_suite_reads_published_layout(tmp_path) -> None:
    rng = np.random.default_rng(1)
    m = 6
    arrays = _write_cifar_c(tmp_path / "CIFAR-10-C", ["fog", "contrast"], m, rng)
    suite = CifarCSuite(corruptions=["fog", "contrast"])
    dummy = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    out = suite.evaluate(brightness_model, _ctx(dummy, torch.zeros(1), 3, tmp_path))
    for name in ("fog", "contrast"):
        for sev in range(1, 6):
            block = slice((sev - 1) * m, sev * m)
            pred = _np_brightness_logits(arrays[name][block]).argmax(1)
            acc = float((pred == arrays["labels"][block]).mean())
            assert out[f"cifar_c/{name}/s{sev}/acc"] == pytest.approx(acc)
    all_acc = [out[f"cifar_c/{n}/s{s}/acc"] for n in ("fog", "contrast") for s in range(1, 6)]
    assert out["cifar_c/mean_acc"] == pytest.approx(np.mean(all_acc))
    assert out["cifar_c/s3/acc"] == pytest.approx(
        (out["cifar_c/fog/s3/acc"] + out["cifar_c/contrast/s3/acc"]) / 2
    )


def test_cifar_c_missing_and_malformed(tmp_path) -> None:
    dummy = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(UserError, match=r"CIFAR-100-C/fog\.npy is missing") as info:
        CifarCSuite(corruptions=["fog"]).evaluate(
            brightness_model, _ctx(dummy, torch.zeros(1), 3, tmp_path, "cifar100")
        )
    assert "zenodo" in str(info.value) and "\n" not in str(info.value)
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    np.save(folder / "fog.npy", np.zeros((7, 32, 32, 3), np.uint8))  # not 5 severity blocks
    np.save(folder / "labels.npy", np.zeros(7, np.int64))
    with pytest.raises(UserError, match="severities 1-5 stacked"):
        CifarCSuite(corruptions=["fog"]).evaluate(
            brightness_model, _ctx(dummy, torch.zeros(1), 3, tmp_path)
        )
    with pytest.raises(UserError, match="unknown or empty corruption"):
        CifarCSuite(corruptions=["fgo"])


# ------------------------------------------------------------------------------- CIFAR-10-P
def test_cifar_p_suite_on_hand_made_sequences(tmp_path) -> None:
    folder = tmp_path / "CIFAR-10-P"
    folder.mkdir()
    levels = {0: 20, 1: 128, 2: 230}  # grey levels the brightness model maps to classes 0, 1, 2

    def frames(classes: list[list[int]]) -> np.ndarray:
        x = np.zeros((len(classes), len(classes[0]), 32, 32, 3), np.uint8)
        for i, seq in enumerate(classes):
            for t, c in enumerate(seq):
                x[i, t] = levels[c]
        return x

    seqs = [[0, 1, 1, 0], [2, 2, 2, 2], [1, 0, 1, 1]]
    np.save(folder / "rotate.npy", frames(seqs))
    np.save(folder / "shot_noise_2.npy", frames(seqs))
    suite = CifarPSuite(perturbations=["rotate", "shot_noise_2"], chunk=2)
    dummy = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    out = suite.evaluate(brightness_model, _ctx(dummy, torch.zeros(1), 3, tmp_path))
    # consecutive flips: 2 + 0 + 2 of 9; against the first frame: 2 + 0 + 1 of 9
    assert out["cifar_p/rotate/fp"] == pytest.approx(4 / 9)
    assert out["cifar_p/shot_noise_2/fp"] == pytest.approx(3 / 9)
    assert out["cifar_p/mfp"] == pytest.approx(7 / 18)
    with pytest.raises(UserError, match=r"CIFAR-10-P/tilt\.npy is missing"):
        CifarPSuite(perturbations=["tilt"]).evaluate(
            brightness_model, _ctx(dummy, torch.zeros(1), 3, tmp_path)
        )


# ------------------------------------------------------------------------------ corruptions
def _images(seed: int, n: int = 4, c: int = 3, size: int = 8) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), generator=gen, dtype=torch.uint8)


def test_contrast_and_brightness_match_reference_formulas() -> None:
    x = _images(0)
    xf = x.double().numpy() / 255.0
    for sev, c in enumerate((0.75, 0.5, 0.4, 0.3, 0.15), start=1):
        means = xf.mean(axis=(2, 3), keepdims=True)
        expected = np.floor(np.clip((xf - means) * c + means, 0, 1) * 255)
        got = corrupt(x, "contrast", sev).double().numpy()
        assert np.abs(got - expected).max() <= 1  # float32 vs float64 at the floor's edge
    # brightness via the standard library's HSV conversion, pixel by pixel
    c = 0.3
    got = corrupt(x, "brightness", 5).numpy()
    for n in range(2):
        for i in range(8):
            for j in range(8):
                h, s, v = colorsys.rgb_to_hsv(*xf[n, :, i, j])
                rgb = np.array(colorsys.hsv_to_rgb(h, s, min(v + c, 1.0)))
                assert np.abs(got[n, :, i, j] - np.floor(rgb * 255)).max() <= 1


def test_defocus_blur_matches_scipy() -> None:
    from scipy.ndimage import convolve
    from scipy.signal import convolve2d

    x = _images(1, n=2, c=1, size=8)
    for sev, (radius, sigma) in enumerate(
        ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)), 1
    ):
        ax = np.arange(-8, 9)
        disk = (ax[:, None] ** 2 + ax[None, :] ** 2 <= radius**2).astype(np.float64)
        disk /= disk.sum()
        g = np.exp(-(np.arange(-1, 2) ** 2) / (2 * sigma**2))
        g /= g.sum()
        kernel = convolve2d(disk, np.outer(g, g), mode="same")
        kernel /= kernel.sum()
        k = defocus_kernel(radius, sigma).numpy()
        assert k.shape[0] % 2 == 1 and k.shape == k.shape[::-1]
        embedded = np.zeros((17, 17))
        lo = 8 - k.shape[0] // 2
        embedded[lo : lo + k.shape[0], lo : lo + k.shape[1]] = k
        np.testing.assert_allclose(embedded, kernel, atol=1e-11)
        xf = x.double().numpy()[:, 0] / 255.0
        expected = np.stack([convolve(img, kernel, mode="mirror") for img in xf])
        expected = np.floor(np.clip(expected, 0, 1) * 255)
        got = corrupt(x, "defocus_blur", sev).double().numpy()[:, 0]
        assert np.abs(got - expected).max() <= 1


def test_noise_corruptions_statistics() -> None:
    grey = torch.full((20, 1, 32, 32), 128, dtype=torch.uint8)
    n = grey.numel()
    y = corrupt(grey, "gaussian_noise", 5, seed=0).double() - 128
    assert y.std().item() == pytest.approx(0.10 * 255, rel=0.05)
    y = corrupt(grey, "impulse_noise", 5, seed=0)
    changed = y != 128
    assert changed.double().mean().item() == pytest.approx(0.07, abs=0.01)
    assert set(y[changed].unique().tolist()) <= {0, 255}
    y = corrupt(grey, "shot_noise", 5, seed=0).double() / 255
    # Poisson(x c)/c: mean x, variance x / c (c = 50); then floor to uint8 costs ~1/2 level
    assert y.mean().item() == pytest.approx(128 / 255 - 0.5 / 255, abs=0.005)
    assert y.var().item() == pytest.approx((128 / 255) / 50, rel=0.1)
    y = corrupt(grey, "speckle_noise", 5, seed=0).double() / 255 - 128 / 255
    assert y.std().item() == pytest.approx(0.2 * 128 / 255, rel=0.05)
    assert torch.equal(corrupt(grey, "gaussian_noise", 3, 7), corrupt(grey, "gaussian_noise", 3, 7))
    assert n > 0
    with pytest.raises(UserError, match="unknown corruption"):
        corrupt(grey, "fog", 1)
    with pytest.raises(UserError, match="severity 6"):
        corrupt(grey, "contrast", 6)


def test_corruption_suite_accuracy_matches_direct_computation(tmp_path) -> None:
    x = _images(2, n=30, c=3, size=8)
    labels = brightness_model(x).argmax(-1)  # clean accuracy 1
    out = CorruptionSuite(corruptions=["contrast", "brightness"]).evaluate(
        brightness_model, _ctx(x, labels, 3, tmp_path)
    )
    assert out["corruption/clean/acc"] == 1.0
    for name in ("contrast", "brightness"):
        for sev in range(1, 6):
            pred = brightness_model(corrupt(x, name, sev)).argmax(-1)
            assert out[f"corruption/{name}/s{sev}/acc"] == pytest.approx(
                (pred == labels).double().mean().item()
            )


# ---------------------------------------------------------------------------- suite loading
def test_load_suite_from_yaml_and_errors() -> None:
    suite, cfg = load_suite("ood", {"source": "sklearn_patches"})
    assert isinstance(suite, OODSuite) and suite.source == "sklearn_patches" and cfg["every"] == 0
    with pytest.raises(UserError, match="unknown eval suite 'calib'"):
        load_suite("calib")
    with pytest.raises(UserError, match="has no setting 'bins'"):
        load_suite("calibration", {"bins": 10})
    with pytest.raises(UserError, match="every=-1"):
        load_suite("calibration", {"every": -1})


# -------------------------------------------------------------------------- held-out split
def test_holdout_split() -> None:
    labels = np.array([0] * 10 + [1] * 30)
    train, val = holdout_split(40, 0.25, seed=0, labels=labels)
    assert len(val) == 10 and len(train) == 30
    assert np.array_equal(np.sort(np.r_[train, val]), np.arange(40))
    # stratified: 2.5 and 7.5 -> floors 2 and 7, the spare one to the first of the tied remainders
    assert (labels[val] == 0).sum() == 3 and (labels[val] == 1).sum() == 7
    _again, val2 = holdout_split(40, 0.25, seed=0, labels=labels)
    assert np.array_equal(val, val2)
    _, val3 = holdout_split(40, 0.25, seed=1, labels=labels)
    assert not np.array_equal(val, val3)
    _, plain = holdout_split(40, 0.1, seed=0)
    assert len(plain) == 4
    rec = split_record(0.25, 0, train, val)
    assert (
        rec["n_val"] == 10
        and rec["val_indices_sha256"] != split_record(0.25, 1, train, val3)["val_indices_sha256"]
    )
    with pytest.raises(UserError, match=r"fraction=1\.0"):
        holdout_split(40, 1.0, 0)
    with pytest.raises(UserError, match="empty split"):
        holdout_split(5, 0.01, 0)


def test_suite_runner_schedule_from_composed_config(tmp_path) -> None:
    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        cfg = compose(
            "config",
            overrides=[
                "experiment=quickstart",
                "+eval=[calibration,corruption]",
                "eval.suites.calibration.every=2",
                "eval.suites.corruption.corruptions=[contrast]",
            ],
        )
    suites = build_suites(cfg.eval.suites)
    x = _images(3, n=12, c=3, size=8)
    runner = SuiteRunner(suites, _ctx(x, brightness_model(x).argmax(-1), 3, tmp_path))
    ran = [
        sorted({k.split("/")[0] for k in runner.after_epoch(e, brightness_model)}) for e in range(4)
    ]
    assert ran == [[], ["calibration"], [], ["calibration"]]  # epochs 2 and 4 (1-based)
    end = runner.at_end(brightness_model)
    assert {k.split("/")[0] for k in end} == {"calibration", "corruption"}
    scalars = flat_float(end)
    assert "calibration/ece" in scalars and "calibration/reliability/count" not in scalars
