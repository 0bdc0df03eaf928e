"""The configuration: every experiment composes and builds, the paper presets are the paper's
numbers (read off Appendix A.1 by hand), an experiment's identity and run directory name, and
the command line as Hydra users know it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import OmegaConf

from noisybench.config import (
    CONF_DIR,
    compose,
    config_differences,
    identity,
    resolved,
    run_variant,
    without_name,
)
from noisybench.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
NOISES = sorted(p.stem for p in (CONF_DIR / "noise").glob("*.yaml"))
# Methods whose configs take values from the paper presets (``${paper:KEY}``).
PRESET_METHODS = sorted(
    p.stem for p in (CONF_DIR / "method").glob("*.yaml") if "${paper:" in p.read_text()
)

# Appendix A.1, by hand: BSD "gamma = 0.85 and c = 2000 when injecting symmetric noise, and
# gamma = 0.9 and c = 1000 for asymmetric noise" (tau 0.8 under noise, 1 on clean data; clean
# CNNs gamma 0.95, c 1000); BSD+ "gamma = 0.95 and c = 1000 for all experiments, lambda_c = 2
# under asymmetric noise ... 4, 7 and 14 for noise levels 20%, 50% and 80%".
PAPER = {
    ("bsd", "none"): {"gamma": 0.95, "c": 1000.0, "eps": 0.0, "tau": 1.0},
    ("bsd", "sym20"): {"gamma": 0.85, "c": 2000.0, "tau": 0.8},
    ("bsd", "sym50"): {"gamma": 0.85, "c": 2000.0, "tau": 0.8},
    ("bsd", "sym80"): {"gamma": 0.85, "c": 2000.0, "tau": 0.8},
    ("bsd", "asym10"): {"gamma": 0.9, "c": 1000.0, "tau": 0.8},
    ("bsd", "asym40"): {"gamma": 0.9, "c": 1000.0, "tau": 0.8},
    ("bsdplus", "sym20"): {"gamma": 0.95, "c": 1000.0, "tau": 0.8, "lambda_c": 4.0},
    ("bsdplus", "sym50"): {"gamma": 0.95, "c": 1000.0, "tau": 0.8, "lambda_c": 7.0},
    ("bsdplus", "sym80"): {"gamma": 0.95, "c": 1000.0, "tau": 0.8, "lambda_c": 14.0},
    ("bsdplus", "asym30"): {"gamma": 0.95, "c": 1000.0, "tau": 0.8, "lambda_c": 2.0},
    ("bsdplus", "asym40"): {"gamma": 0.95, "c": 1000.0, "tau": 0.8, "lambda_c": 2.0},
}


def _method(*overrides: str) -> dict:
    return resolved(compose(list(overrides)))["method"]


# ------------------------------------------------------------------------------ composition
# Values an experiment refuses to run without (${nb_required:...}; its source gives none).
MUST_GIVE = {
    "ref_dlb": [
        "optim.optimizer.lr=0.1",
        "optim.scheduler.milestones=[1]",
        "epochs=2",
        "batch_size=64",
    ],
}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_its_objects_build(experiment: str) -> None:
    """Each experiment file composes with the method it is meant for, and its model, method
    and optimizer instantiate (models on their real input size, no weights downloaded)."""
    # an experiment file named ..._<method> is meant for that method
    suffix = experiment.rsplit("_", 1)[-1]
    method = suffix if (CONF_DIR / "method" / f"{suffix}.yaml").is_file() else "bsd"
    cfg = compose([f"experiment={experiment}", f"method={method}", *MUST_GIVE.get(experiment, [])])
    # everything but the dataset reader (its fingerprint reads the data, not here in tests)
    config = {key: resolved(cfg[key]) for key in ("model", "method", "optim")}
    model_kwargs = without_name(cfg.model)
    model_kwargs.pop("pretrained", None)  # no download in tests
    with torch.device("meta"):  # the constructors run; no memory is filled with weights
        model = hydra_instantiate(model_kwargs, num_classes=10, in_channels=3)
    assert sum(p.numel() for p in model.parameters()) > 0
    obj = hydra_instantiate(without_name(cfg.method))
    assert obj.__class__.__name__
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = hydra_instantiate(config["optim"]["optimizer"], params=params)
    assert optimizer.param_groups[0]["lr"] > 0


# ------------------------------------------------------------------------------ presets
@pytest.mark.parametrize(("method", "noise"), sorted(PAPER))
def test_paper_presets_are_the_papers_numbers(method: str, noise: str) -> None:
    values = _method(f"method={method}", f"noise={noise}")
    for key, expected in PAPER[(method, noise)].items():
        assert values[key] == pytest.approx(expected), (method, noise, key)


@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("method", PRESET_METHODS)
def test_every_noise_config_has_a_preset_for_every_preset_method(method: str, noise: str) -> None:
    values = _method(f"method={method}", f"noise={noise}")
    assert all(isinstance(v, float) for k, v in values.items() if k in ("gamma", "c", "tau"))


def test_the_preset_follows_the_rate_not_the_file_name() -> None:
    """noise=sym50 with noise.rate=0.8 is 80 % symmetric noise: BSD+'s lambda_c is 14."""
    assert _method("method=bsdplus", "noise=sym50", "noise.rate=0.8")["lambda_c"] == 14.0


def test_a_rate_the_paper_did_not_calibrate_is_refused_unless_given() -> None:
    with pytest.raises(
        UserError, match=r"lambda_c .*rates 0.2, 0.5, 0.8, not 0.6.*method\.lambda_c"
    ):
        _method("method=bsdplus", "noise=sym50", "noise.rate=0.6")
    explicit = _method("method=bsdplus", "noise=sym50", "noise.rate=0.6", "method.lambda_c=9")
    assert explicit["lambda_c"] == 9.0 and explicit["gamma"] == 0.95
    # BSD's symmetric values hold across the paper's 20-80 % range, not beyond it.
    assert _method("method=bsd", "noise=sym50", "noise.rate=0.6")["gamma"] == 0.85
    with pytest.raises(UserError, match="gamma"):
        _method("method=bsd", "noise=sym50", "noise.rate=0.9")


def test_command_line_and_experiment_values_win_over_presets() -> None:
    assert _method("method=bsd", "noise=sym50", "method.gamma=0.7")["gamma"] == 0.7
    # Table 5 sets BSD's CutMix values (gamma 0.9, c 500) in its experiment file.
    table5 = _method("experiment=table5_cutmix", "method=bsd")
    assert (table5["gamma"], table5["c"]) == (0.9, 500.0)


# ------------------------------------------------------------------------------ identity
def test_run_variant_names_by_hand() -> None:
    assert run_variant([]) == ""
    assert run_variant(["method=bsd", "noise=sym50", "seed=3", "out_dir=x", "progress=false"]) == ""
    assert (
        run_variant(["experiment=quickstart", "method.gamma=0.9", "epochs=3", "method=bsd"])
        == "quickstart+epochs:3+method.gamma:0.9"
    )
    assert run_variant(["optim=adam_onecycle", "batch_size=64", "eval.batch_size=9"]) == (
        "batch_size:64+optim:adam_onecycle"
    )
    # Values with path separators and list punctuation stay one safe path component.
    assert run_variant(["method.teacher_runs=[runs/a/seed0,runs/b]"]) == (
        "method.teacher_runs:runs_a_seed0-runs_b"
    )
    long = run_variant([f"method.note={'x' * 300}"])
    assert len(long) == 100 + len("+sha") + 10 and long.startswith("method.note:xxx")


def test_a_run_directory_can_be_passed_back_as_an_override_value(tmp_path: Path) -> None:
    """A run directory's name survives Hydra's override parser unquoted (e.g. as
    noise.label_file=.../noisy_labels.npy), so no ',' or '=' in it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    variant = run_variant(["experiment=quickstart", "method.gamma=0.9", "noise.rate=0.3"])
    value = f"{tmp_path}/digits/small_cnn/sym50/bsd/{variant}/seed0/noisy_labels.npy"
    override = OverridesParser.create().parse_override(f"noise.label_file={value}")
    assert override.value() == value


def test_identity_ignores_where_and_how_but_not_what() -> None:
    a = resolved(compose(["experiment=quickstart", "method=bsd"]))
    b = resolved(
        compose(["experiment=quickstart", "method=bsd", "out_dir=/elsewhere", "device=cpu"])
    )
    assert identity(a) == identity(b) and config_differences(a, b) == []
    c = resolved(compose(["experiment=quickstart", "method=bsd", "method.gamma=0.9"]))
    assert config_differences(a, c) == ["method.gamma"]
    d = resolved(compose(["experiment=quickstart", "method=bsd", "seed=1"]))
    assert identity(a) != identity(d)
    assert identity(a, with_seed=False) == identity(d, with_seed=False)


def test_per_seed_keys_are_left_out_of_a_row_identity() -> None:
    a = resolved(compose(["experiment=quickstart", "method=kd", "method.teacher_runs=[r/seed0]"]))
    b = resolved(
        compose(["experiment=quickstart", "method=kd", "seed=1", "method.teacher_runs=[r/seed1]"])
    )
    assert identity(a, with_seed=False) == identity(b, with_seed=False)
    assert identity(a) != identity(b)


def test_unknown_and_added_keys_are_refused_with_a_suggestion() -> None:
    with pytest.raises(UserError, match="did you mean epochs"):
        compose(["epoch=3"])
    with pytest.raises(UserError, match=r"\+epoch=.*did you mean epochs"):
        compose(["+epoch=3"])


# ------------------------------------------------------------------------------ command line
def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "noisybench", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.cli
def test_help_lists_the_user_groups_only(tmp_path: Path) -> None:
    proc = _cli("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for group in ("dataset:", "noise:", "model:", "method:", "optim:", "experiment:", "logger:"):
        assert group in proc.stdout
    assert "method_optim" not in proc.stdout and "paper" not in proc.stdout.split("Examples")[0]
    assert "noisybench -m experiment=quickstart" in proc.stdout


@pytest.mark.cli
def test_hydra_flags_pass_through(tmp_path: Path) -> None:
    """--cfg, --info and -sc work as Hydra documents them and start no run."""
    job = _cli("--cfg", "job", "experiment=quickstart", "method=bsdplus", "--resolve", cwd=tmp_path)
    assert job.returncode == 0, job.stderr
    method = OmegaConf.create(job.stdout).method
    assert method.lambda_c == 7.0  # the 50 % symmetric preset of the quickstart's noise
    info = _cli("--info", "searchpath", cwd=tmp_path)
    assert info.returncode == 0 and str(CONF_DIR) in info.stdout, info.stderr
    completion = _cli("-sc", "install=bash", cwd=tmp_path)
    assert completion.returncode == 0 and "complete" in completion.stdout, completion.stderr
    assert not list(tmp_path.rglob("result.json"))


@pytest.mark.cli
def test_csv_logger_writes_one_row_per_epoch(tmp_path: Path) -> None:
    proc = _cli(
        "experiment=quickstart",
        "epochs=2",
        "logger=[csv]",
        "progress=false",
        f"out_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (csv_file,) = tmp_path.rglob("metrics.csv")
    rows = csv_file.read_text().splitlines()
    assert rows[0].split(",")[0] == "epoch" and [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    assert not list(tmp_path.rglob("tb"))  # only the chosen logger ran


@pytest.mark.cli
@pytest.mark.slow
def test_the_wheel_carries_its_configs_and_no_top_level_baselines(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("noisybench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "noisybench/conf/config.yaml" in names
    assert "noisybench/conf/experiment/quickstart.yaml" in names
    assert "noisybench/conf/hydra/help/noisybench.yaml" in names
    assert "noisybench/baselines/te.py" in names
    assert "noisybench/paper_tables.yaml" in names
    assert not [n for n in names if n.startswith(("baselines/", "conf/"))]
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert (
        entry
        and "noisybench = noisybench.cli:main" in zipfile.ZipFile(wheel).read(entry[0]).decode()
    )


def test_configs_saved_by_version_0_1_are_the_same_experiment() -> None:
    """A result.json of noisybench 0.1 (top-level ``baselines`` targets, a ``tensorboard``
    key, no noise ``setting``) describes the same experiment as today's config."""
    now = resolved(compose(["experiment=quickstart", "method=ls"]))
    old = {**now, "tensorboard": True, "noise": dict(now["noise"]), "method": dict(now["method"])}
    old.pop("logger")
    del old["noise"]["setting"]
    old["method"]["_target_"] = "baselines.ls.LabelSmoothing"
    assert now["method"]["_target_"] == "noisybench.baselines.ls.LabelSmoothing"
    assert config_differences(old, now) == []
    old["method"]["smoothing"] = 0.2
    assert config_differences(old, now) == ["method.smoothing"]


@pytest.mark.parametrize("dataset", sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml")))
def test_every_dataset_config_builds_its_strong_view(dataset: str) -> None:
    """Every dataset's augmentation settings are ones the views accept (BSD+'s strong view)."""
    from noisybench.data.views import build_views

    # the augment node only: the reader's fingerprint needs the data on disk
    augment = resolved(compose([f"dataset={dataset}"]).dataset.augment)
    views = build_views(["weak", "strong"], augment, (0.5,) * 3, (0.25,) * 3, (32, 32))
    assert set(views) == {"weak", "strong"}
