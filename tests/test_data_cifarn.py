"""CIFAR-10N / CIFAR-100N real human noise (noisybench/data/cifarn.py, noise.py apply_noise).

The label files are written here exactly as the official ones are: ``torch.save`` of a dict of
int64 NumPy arrays, indexed like the (tiny) CIFAR training set that the test also writes in
the official pickled-batch format. The noisy sets change hand-chosen indices, so the realised
rates and transition entries are known before the code runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from test_data_readers import write_cifar10, write_cifar100

from noisybench.data.cifar import load_cifar
from noisybench.data.noise import apply_noise, inject_noise
from noisybench.errors import UserError
from noisybench.run import run_experiment

ROOT = Path(__file__).resolve().parents[1]
PER_BATCH = 20  # 5 batches: 100 training images


def _shifted(clean: np.ndarray, idx: list[int], shift: int = 1, k: int = 10) -> np.ndarray:
    out = clean.copy()
    out[idx] = (clean[idx] + shift) % k
    return out


def write_c10n(path: Path, clean: np.ndarray) -> dict[str, np.ndarray]:
    """A CIFAR-10_human.pt: aggre flips 9 samples, random1/2/3 flip 17/18/17, worse 40."""
    sets = {
        "clean_label": clean.astype(np.int64),
        "aggre_label": _shifted(clean, list(range(0, 9))),
        "random_label1": _shifted(clean, list(range(10, 27)), 3),
        "random_label2": _shifted(clean, list(range(30, 48)), 5),
        "random_label3": _shifted(clean, list(range(50, 67)), 7),
        "worse_label": _shifted(clean, list(range(0, 100, 5)) + list(range(1, 100, 5)), 1),
    }
    for value in sets.values():
        assert value.dtype == np.int64
    torch.save(sets, path)
    return sets


@pytest.fixture
def cifar10(tmp_path: Path) -> tuple[Path, np.ndarray]:
    written = write_cifar10(tmp_path, per_batch=PER_BATCH)
    return tmp_path, np.asarray(written["labels"], dtype=np.int64)


@pytest.mark.parametrize(
    ("variant", "wrong"),
    [
        ("cifar10n_aggre", 9),
        ("cifar10n_random1", 17),
        ("cifar10n_random2", 18),
        ("cifar10n_random3", 17),
        ("cifar10n_worse", 40),
    ],
)
def test_cifar10n_sets_rates_and_record(cifar10, variant: str, wrong: int) -> None:
    root, clean = cifar10
    file = root / "CIFAR-10_human.pt"
    sets = write_c10n(file, clean)
    data = load_cifar("cifar10", str(root), verify=False)
    noisy, record = apply_noise(
        data.train_labels.numpy(), 10, variant=variant, rate=0.1, seed=0, file=file
    )
    key = {"cifar10n_aggre": "aggre_label", "cifar10n_worse": "worse_label"}.get(
        variant, "random_label" + variant[-1]
    )
    np.testing.assert_array_equal(noisy, sets[key])
    assert record.variant == variant
    assert record.realised_rate == pytest.approx(wrong / 100)
    assert record.label_file == str(file)
    little_endian = np.ascontiguousarray(sets[key], dtype="<i8").tobytes()
    assert record.sha256 == hashlib.sha256(little_endian).hexdigest()
    # Transition matrix, counted by hand in a loop.
    counts = np.zeros((10, 10))
    for c, y in zip(clean, sets[key], strict=True):
        counts[c, y] += 1
    for c in range(10):
        n_c = counts[c].sum()
        for j in range(10):
            expected = counts[c, j] / n_c if n_c else 0.0
            assert record.transition[c][j] == pytest.approx(expected)


def test_cifar100n_fine_and_coarse(tmp_path: Path) -> None:
    written = write_cifar100(tmp_path, n_train=120)
    fine = written["fine"].astype(np.int64)
    coarse = written["coarse_of"][fine].astype(np.int64)
    noisy_fine = _shifted(fine, list(range(0, 120, 3)), 1, 100)  # 40 of 120
    noisy_coarse = _shifted(coarse, list(range(0, 120, 4)), 2, 20)  # 30 of 120
    file = tmp_path / "CIFAR-100_human.pt"
    torch.save(
        {
            "clean_label": fine,
            "noisy_label": noisy_fine,
            "clean_coarse_label": coarse,
            "noisy_coarse_label": noisy_coarse,
        },
        file,
    )
    data = load_cifar("cifar100", str(tmp_path), verify=False)
    labels, record = apply_noise(
        data.train_labels.numpy(), 100, variant="cifar100n_noisy", rate=0.402, seed=0, file=file
    )
    np.testing.assert_array_equal(labels, noisy_fine)
    assert record.realised_rate == pytest.approx(40 / 120)
    data20 = load_cifar("cifar100", str(tmp_path), verify=False, labels="coarse")
    assert data20.num_classes == 20
    np.testing.assert_array_equal(data20.train_labels.numpy(), coarse)
    np.testing.assert_array_equal(
        data20.test_labels.numpy(), written["coarse_of"][written["test_fine"]]
    )
    labels, record = apply_noise(
        data20.train_labels.numpy(),
        20,
        variant="cifar100n_noisy_coarse",
        rate=0.0,
        seed=0,
        file=file,
    )
    np.testing.assert_array_equal(labels, noisy_coarse)
    assert record.realised_rate == pytest.approx(30 / 120)
    # The fine set on the coarse dataset (or the reverse) is refused.
    with pytest.raises(UserError, match="has 100 classes but the dataset has 20"):
        apply_noise(coarse, 20, variant="cifar100n_noisy", rate=0.0, seed=0, file=file)


def test_verification_refuses_bad_files(cifar10) -> None:
    root, clean = cifar10
    good = write_c10n(root / "good.pt", clean)

    def refused(name: str, sets: dict, match: str) -> None:
        torch.save(sets, root / name)
        with pytest.raises(UserError, match=match) as info:
            apply_noise(clean, 10, variant="cifar10n_worse", rate=0.4, seed=0, file=root / name)
        assert "\n" not in str(info.value)

    other_clean = clean.copy()
    other_clean[[3, 8]] = (other_clean[[3, 8]] + 1) % 10
    refused("clean.pt", {**good, "clean_label": other_clean}, r"differ .* at 2 of 100 samples")
    refused("short.pt", {**good, "worse_label": good["worse_label"][:99]}, "has 99 labels")
    bad = good["worse_label"].copy()
    bad[0] = 10
    refused("range.pt", {**good, "worse_label": bad}, r"outside \[0, 10\)")
    refused(
        "nokey.pt", {k: v for k, v in good.items() if k != "worse_label"}, "has no 'worse_label'"
    )
    refused(
        "2d.pt", {**good, "worse_label": good["worse_label"].reshape(10, 10)}, "not 1-D integer"
    )
    # Arrays of other dtypes need globals that are not allow-listed: refused before building.
    refused("float.pt", {**good, "worse_label": good["worse_label"].astype(float)}, "Float64DType")
    with pytest.raises(UserError, match=r"noise\.download=true"):
        apply_noise(clean, 10, variant="cifar10n_aggre", rate=0.1, seed=0, file=root / "none.pt")
    (root / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="not a readable torch file"):
        apply_noise(clean, 10, variant="cifar10n_aggre", rate=0.1, seed=0, file=root / "junk.pt")
    # Drawing a human set (no file) is impossible.
    with pytest.raises(UserError, match="cannot be drawn"):
        inject_noise("cifar10n_aggre", clean, 10, 0.1, 0)


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_payload_is_refused_without_running(cifar10) -> None:
    root, clean = cifar10
    marker = root / "payload_ran"
    sets = write_c10n(root / "good.pt", clean)
    torch.save({**sets, "extra": _Payload(marker)}, root / "evil.pt")
    with pytest.raises(UserError, match="holds more than label arrays"):
        apply_noise(clean, 10, variant="cifar10n_worse", rate=0.4, seed=0, file=root / "evil.pt")
    assert not marker.exists()


def test_download_only_when_asked(cifar10, monkeypatch: pytest.MonkeyPatch) -> None:
    root, clean = cifar10
    calls: list[tuple[str, str, str]] = []

    def fake_download(url: str, folder: str, filename: str) -> None:
        calls.append((url, folder, filename))
        raise OSError("network unreachable")

    import torchvision.datasets.utils as tvu

    monkeypatch.setattr(tvu, "download_url", fake_download)
    target = root / "CIFAR-10_human.pt"
    with pytest.raises(UserError, match=r"noise\.download=true"):
        apply_noise(clean, 10, variant="cifar10n_aggre", rate=0.1, seed=0, file=target)
    assert calls == []
    with pytest.raises(UserError, match=r"could not download .*network unreachable"):
        apply_noise(
            clean, 10, variant="cifar10n_aggre", rate=0.1, seed=0, file=target, download=True
        )
    assert calls == [
        (
            "https://raw.githubusercontent.com/UCSC-REAL/cifar-10-100n/main/data/CIFAR-10_human.pt",
            str(root),
            "CIFAR-10_human.pt",
        )
    ]


def test_noise_configs() -> None:
    expected = {
        "c10n_aggre": ("cifar10n_aggre", 0.0903),
        "c10n_random1": ("cifar10n_random1", 0.1723),
        "c10n_random2": ("cifar10n_random2", 0.1812),
        "c10n_random3": ("cifar10n_random3", 0.1764),
        "c10n_worse": ("cifar10n_worse", 0.4021),
        "c100n_noisy": ("cifar100n_noisy", 0.4020),
        "c100n_noisy_coarse": ("cifar100n_noisy_coarse", 0.0),
    }
    for name, (variant, rate) in expected.items():
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=[f"noise={name}", "data_dir=/d"])
        assert cfg.noise.name == name and cfg.noise.setting == "real"
        assert cfg.noise.variant == variant and cfg.noise.rate == rate
        assert cfg.noise.file.startswith("/d/CIFAR-10") and cfg.noise.download is False


def test_cifar10n_end_to_end(cifar10, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CIFAR-10N-format file through the real run: the result file records the set."""
    root, clean = cifar10
    sets = write_c10n(root / "CIFAR-10_human.pt", clean)
    threads = torch.get_num_threads()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "dataset=cifar10",
                "dataset.reader.verify=false",
                "model=small_cnn",
                "noise=c10n_worse",
                "method=ce",
                "optim=adam_onecycle",
                "epochs=1",
                "batch_size=50",
                f"data_dir={root}",
                f"out_dir={root / 'runs'}",
                "progress=false",
                "logger=[]",
            ],
        )
    run_dir = root / "runs" / "run"
    try:
        run_experiment(cfg, run_dir=run_dir)
    finally:
        torch.set_num_threads(threads)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "finished"
    record = result["noise"]
    assert record["variant"] == "cifar10n_worse"
    assert record["realised_rate"] == pytest.approx(0.40)
    assert record["nominal_rate"] == pytest.approx(0.4021)
    assert record["label_file"] == str(root / "CIFAR-10_human.pt")
    assert (
        record["sha256"] == hashlib.sha256(sets["worse_label"].astype("<i8").tobytes()).hexdigest()
    )
    assert result["config"]["noise"]["name"] == "c10n_worse"
    np.testing.assert_array_equal(np.load(run_dir / "noisy_labels.npy"), sets["worse_label"])
    print(json.dumps(record))
