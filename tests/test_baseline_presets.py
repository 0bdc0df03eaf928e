"""The baselines' per-setting values (conf/baseline_presets.yaml) against their sources.

The expected values are written out here from the sources themselves, not from the YAML:
DivideMix (Li et al. 2020) Appendix B Table 7 (lambda_u: CIFAR-10 0 / 25 / 25 / 50 at sym
20 / 50 / 80 / 90 %, 0 at asym 40 %; CIFAR-100 25 / 150 / 150 / 150), the author's answer in
LiJunnan1992/DivideMix issue 10 (p_threshold 0.6 at 90 %) and ``Train_cifar.py`` (warm_up 10 /
30, ``if args.r == 0.9`` average of the last 5 losses, NegEntropy for asym); shengliu66/ELR's
``config_cifar10.json`` (beta 0.7, lambda 3), ``config_cifar10_asym.json`` (0.9, 1) and
``config_cifar100.json`` (0.9, 7); AlanChou/Truncated-Loss's README commands (start_prune 40 on
CIFAR-10, 80 on CIFAR-100).
"""

from __future__ import annotations

import pytest
import yaml

from noisybench.config import CONF_DIR, compose, without_name
from noisybench.config import instantiate as nb_instantiate
from noisybench.errors import UserError

DM = ("lambda_u", "p_threshold", "warm_up", "loss_history", "confidence_penalty")
DIVIDEMIX = {
    ("cifar10", "sym20", None): (0.0, 0.5, 10, 1, False),
    ("cifar10", "sym50", None): (25.0, 0.5, 10, 1, False),
    ("cifar10", "sym80", None): (25.0, 0.5, 10, 1, False),
    ("cifar10", "sym80", 0.9): (50.0, 0.6, 10, 5, False),
    ("cifar10", "asym40", None): (0.0, 0.5, 10, 1, True),
    ("cifar100", "sym20", None): (25.0, 0.5, 30, 1, False),
    ("cifar100", "sym50", None): (150.0, 0.5, 30, 1, False),
    ("cifar100", "sym80", None): (150.0, 0.5, 30, 1, False),
    ("cifar100", "sym80", 0.9): (150.0, 0.6, 30, 5, False),
}


def _method(*overrides: str):
    return compose(list(overrides)).method


def instantiate(method_cfg):
    """The method as the build constructs it (build.py: ``instantiate(without_name(...))``)."""
    return nb_instantiate(without_name(method_cfg), "method")


@pytest.mark.parametrize(("key", "expected"), list(DIVIDEMIX.items()))
def test_dividemix_values_follow_table_7_and_the_code(key, expected) -> None:
    dataset, noise, rate = key
    extra = [] if rate is None else [f"noise.rate={rate}"]
    m = _method("method=dividemix", f"dataset={dataset}", f"noise={noise}", *extra)
    assert tuple(m[k] for k in DM) == expected


@pytest.mark.parametrize(
    ("dataset", "noise", "beta", "lam"),
    [
        ("cifar10", "sym20", 0.7, 3.0),
        ("cifar10", "sym80", 0.7, 3.0),
        ("cifar10", "asym40", 0.9, 1.0),
        ("cifar100", "sym50", 0.9, 7.0),
        ("cifar100", "asym40_c100pair", 0.9, 7.0),
    ],
)
def test_elr_values_follow_the_authors_config_files(dataset, noise, beta, lam) -> None:
    m = _method("method=elr", f"dataset={dataset}", f"noise={noise}")
    assert (m.beta, m.lam) == (beta, lam)


def test_gce_truncation_starts_at_80_on_cifar100() -> None:
    on = "method.truncated=true"
    assert _method("method=gce", "dataset=cifar100", "noise=sym50", on).start_prune == 80
    assert _method("method=gce", "dataset=cifar10", "noise=sym50", on).start_prune == 40
    # without truncation the value is unused and nothing is looked up (digits has none)
    assert _method("method=gce", "experiment=quickstart").start_prune is None
    gce = instantiate(_method("method=gce", "experiment=quickstart"))
    assert gce.truncated is False


@pytest.mark.parametrize(
    "overrides",
    [
        ["method=dividemix", "experiment=quickstart"],  # digits: no source value
        ["method=dividemix", "dataset=cifar100", "noise=asym40_c100pair"],  # issue 41: none
        ["method=dividemix", "dataset=cifar10", "noise=asym20"],  # only asym 40 % in Table 7
        ["method=elr", "experiment=quickstart"],
        ["method=gce", "experiment=quickstart", "method.truncated=true"],
    ],
)
def test_no_source_value_and_none_given_is_refused_in_one_line(overrides) -> None:
    with pytest.raises(UserError) as err:
        instantiate(_method(*overrides))
    text = str(err.value)
    assert "\n" not in text and "explicitly" in text and "method." in text


def test_refusal_names_every_missing_key_and_explicit_values_win() -> None:
    with pytest.raises(UserError) as err:
        instantiate(_method("method=dividemix", "experiment=quickstart", "method.warm_up=1"))
    text = str(err.value)
    for key in ("lambda_u", "p_threshold", "loss_history", "confidence_penalty"):
        assert f"method.{key}=" in text
    assert "method.warm_up=" not in text  # given by the user
    given = ["method.lambda_u=7", "method.p_threshold=0.5", "method.loss_history=1"]
    given += ["method.confidence_penalty=false", "method.warm_up=1"]
    m = _method("method=dividemix", "experiment=quickstart", *given)
    assert (m.lambda_u, m.warm_up) == (7, 1)
    # a user value on CIFAR-10 also replaces the preset
    assert (
        _method("method=dividemix", "dataset=cifar10", "noise=sym20", "method.lambda_u=25")[
            "lambda_u"
        ]
        == 25
    )


def test_every_entry_cites_a_source() -> None:
    data = yaml.safe_load((CONF_DIR / "baseline_presets.yaml").read_text())
    for method, by_dataset in data.items():
        for dataset, settings in by_dataset.items():
            if not isinstance(settings, dict):
                continue
            for setting, entries in settings.items():
                for entry in entries:
                    assert entry.get("source"), (method, dataset, setting)


@pytest.mark.cli
def test_the_command_line_refuses_a_missing_author_value_in_one_line(tmp_path) -> None:
    """Through the front door (single run and sweep preflight): status 2, one line on stderr
    naming the keys to set, no traceback, nothing written."""
    import subprocess
    import sys

    for extra in ([], ["-m", "seed=0,1"]):
        command = ["experiment=quickstart", "method=dividemix", f"out_dir={tmp_path / 'out'}"]
        proc = subprocess.run(
            [sys.executable, "-m", "noisybench", *extra, *command],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert "the authors of dividemix give no value of warm_up for dataset digits" in lines[0]
        assert "method.warm_up=..." in lines[0]
        assert not (tmp_path / "out").exists()
