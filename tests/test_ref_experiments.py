"""The reference protocols (experiment=ref_<method>) against their sources, written out here:
GCE (AlanChou/Truncated-Loss main.py defaults and README commands, unofficial), ELR
(shengliu66/ELR config_cifar10.json), Co-teaching (bhanML/Co-teaching main.py), DivideMix (the
paper Sec. 4.1 and Train_cifar.py), SCE (train_models.py, util.get_lr_scheduler), PS-KD / LS
(lgcnsai/PS-KD-Pytorch README), mixup (facebookresearch/mixup-cifar10 train.py), CSOT
(changwxx/CSOT-for-LNL main_cifar.py), TE (s-laine/tempens config.py "SVHN with label
corruption", train.py), DLB (Meta-knowledge-Lab/DLB dlb.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from noisybench.config import compose, resolved
from noisybench.errors import UserError

# name: (model, noise variant, rate, optimizer, lr, weight decay, milestones, epochs, batch)
EXPECTED = {
    "gce": ("resnet34", "sym_excl", 0.4, "SGD", 0.01, 1e-4, [40, 80], 120, 128),
    "elr": ("resnet34", "sym_incl", 0.4, "SGD", 0.02, 1e-3, None, 150, 128),
    "coteaching": ("coteaching_cnn", "sym_excl", 0.5, "Adam", 0.001, 0.0, None, 199, 128),
    "dividemix": ("preact_resnet18_dividemix", "sym_incl", 0.5, "SGD", 0.02, 5e-4, [150], 300, 128),
    "otfilter": ("preact_resnet18_dividemix", "sym_incl", 0.5, "SGD", 0.02, 5e-4, [150], 300, 128),
    "sce": ("sce_cnn8", "sym_excl", 0.4, "SGD", 0.01, 1e-4, [41, 81], 120, 128),
    "pskd": ("preact_resnet18_dividemix", None, 0.0, "SGD", 0.1, 5e-4, [150, 225], 300, 128),
    "ls": ("preact_resnet18_dividemix", None, 0.0, "SGD", 0.1, 5e-4, [150, 225], 300, 128),
    "mixup": ("preact_resnet18", "sym_incl", 0.5, "SGD", 0.1, 1e-4, [100, 150], 200, 128),
    "te": ("coteaching_cnn", "sym_incl", 0.2, "Adam", 0.001, 0.0, None, 300, 100),
    "csot": ("preact_resnet18_dividemix", "sym_incl", 0.5, "SGD", 0.02, 5e-4, None, 450, 128),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reference_protocol_matches_its_source(name: str) -> None:
    model, variant, rate, opt, lr, wd, milestones, epochs, batch = EXPECTED[name]
    cfg = resolved(compose([f"experiment=ref_{name}"]))
    assert cfg["model"]["name"] == model
    assert cfg["method"]["name"] == name
    if variant is not None:
        assert (cfg["noise"]["variant"], cfg["noise"]["rate"]) == (variant, rate)
    else:
        assert cfg["noise"]["name"] == "none"
    o = cfg["optim"]["optimizer"]
    assert o["_target_"] == f"torch.optim.{opt}"
    assert (o["lr"], o["weight_decay"]) == (lr, wd)
    if milestones is not None:
        assert cfg["optim"]["scheduler"]["milestones"] == milestones
    assert (cfg["epochs"], cfg["batch_size"]) == (epochs, batch)


def test_reference_protocol_specifics() -> None:
    elr = resolved(compose(["experiment=ref_elr"]))
    assert elr["optim"]["scheduler"]["period_epochs"] == 10  # CosineAnnealingWarmRestarts T_0
    assert elr["optim"]["scheduler"]["eta_min"] == 0.001
    assert (elr["method"]["beta"], elr["method"]["lam"]) == (0.7, 3.0)
    ct = resolved(compose(["experiment=ref_coteaching"]))
    assert ct["optim"]["scheduler"]["decay_start"] == 80  # epoch_decay_start
    assert (ct["optim"]["scheduler"]["beta1_before"], ct["optim"]["scheduler"]["beta1_after"]) == (
        0.9,
        0.1,
    )
    assert ct["method"]["drop_last"] and ct["method"]["code_double_mean"]
    assert ct["method"]["view"] == "plain"  # transforms.ToTensor() only
    gce = resolved(compose(["experiment=ref_gce"]))
    assert gce["method"]["truncated"] and gce["method"]["start_prune"] == 40
    cs = resolved(compose(["experiment=ref_csot"]))  # main_cifar.py: cosine, T_max = 450
    assert cs["optim"]["scheduler"]["_target_"] == "noisybench.schedules.cosine"
    assert (cs["method"]["warm_up"], cs["method"]["confidence_penalty"]) == (10, False)
    assert cs["dataset"]["augment"]["erasing_p"] == 0.0  # the code's strong view: no erasing
    assert cs["dataset"]["augment"]["autoaugment_ranges"] == "lnl"  # its PIL CIFAR10Policy
    dm = resolved(compose(["experiment=ref_dividemix"]))
    assert (dm["method"]["lambda_u"], dm["method"]["warm_up"]) == (25.0, 10)  # CIFAR-10 sym 50 %
    # the code's loaders: --batch_size 64 labelled + 64 unlabelled a step from batch_size 128
    assert (dm["method"]["loader"], dm["method"]["batch_size"]) == ("reference", 128)
    otf = resolved(compose(["experiment=ref_otfilter"]))  # Train_CIFAR.py: cifar10, warm_up 10
    assert (otf["method"]["warm_up"], otf["method"]["lambda_u"], otf["method"]["reg"]) == (
        10,
        25.0,
        10.0,
    )
    assert otf["dataset"]["augment"]["erasing_p"] == 0.0  # transform_strong_10: no erasing
    otf100 = resolved(compose(["experiment=ref_otfilter", "dataset=cifar100"]))
    assert otf100["method"]["warm_up"] == 30
    assert resolved(compose(["experiment=ref_pskd"]))["optim"]["optimizer"]["nesterov"] is True


def test_te_reference_protocol_is_the_label_corruption_run() -> None:
    """config.py's "SVHN with label corruption" run: all labels, lr max 0.001, w_max 300 below
    50 % corruption, 300 epochs of 100 with the last partial batch dropped; Gaussian lr ramps
    (80 up, 50 down) and beta1 0.9 -> 0.5 over the last 50 epochs; no mirroring, 2-pixel
    translation; the ensemble's ramp-up is the code's 80 epochs (not the BSD paper's 100)."""
    te = resolved(compose(["experiment=ref_te"]))
    assert te["dataset"]["name"] == "arrays"  # SVHN given as arrays: no SVHN reader here
    assert (te["dataset"]["augment"]["crop_padding"], te["dataset"]["augment"]["hflip"]) == (
        2,
        False,
    )
    m = te["method"]
    assert (m["alpha"], m["w_max"], m["rampup_epochs"], m["drop_last"]) == (0.6, 300.0, 80, True)
    o = te["optim"]
    assert o["optimizer"]["betas"] == [0.9, 0.999] and o["optimizer"]["eps"] == 1e-8
    assert o["scheduler"]["_target_"] == "noisybench.schedules.gaussian_ramps"
    assert (o["scheduler"]["rampup_epochs"], o["scheduler"]["rampdown_epochs"]) == (80, 50)
    # the experiment's beta1 target (the code's 0.5) wins over method_optim/te.yaml's 0 (BSD's)
    assert (o["beta1_rampdown_epochs"], o["beta1_final"]) == (50, 0.5)
    assert te["model"]["dropout"] == 0.5


def test_dlb_reference_protocol_and_its_unstated_values() -> None:
    """dlb.py: SGD Nesterov, momentum 0.9, weight decay 5e-4 (its argparse defaults), MultiStepLR
    gamma 0.1; T 3, alpha 1; CIFAR-100 (its default dataset), clean labels. lr, batch size,
    epochs and milestones have no default in the code: refused in one line until given."""
    with pytest.raises(UserError, match=r"set optim\.optimizer\.lr=\.\.\. optim\.scheduler"):
        resolved(compose(["experiment=ref_dlb"]))
    given = ["optim.optimizer.lr=0.1", "optim.scheduler.milestones=[2]", "epochs=3"]
    with pytest.raises(UserError, match="batch_size"):  # one missing is still refused
        resolved(compose(["experiment=ref_dlb", *given]))
    dlb = resolved(compose(["experiment=ref_dlb", *given, "batch_size=64"]))
    o = dlb["optim"]["optimizer"]
    assert o["_target_"] == "torch.optim.SGD"
    assert (o["lr"], o["momentum"], o["weight_decay"], o["nesterov"]) == (0.1, 0.9, 5e-4, True)
    assert dlb["optim"]["scheduler"]["gamma"] == 0.1
    assert (dlb["method"]["T"], dlb["method"]["alpha"]) == (3.0, 1.0)
    assert (dlb["dataset"]["name"], dlb["noise"]["name"]) == ("cifar100", "none")
    assert (dlb["epochs"], dlb["batch_size"]) == (3, 64)


def test_dlb_reference_refusal_is_one_line_on_the_command_line(cli, tmp_path: Path) -> None:
    proc = cli(f"out_dir={tmp_path}", "experiment=ref_dlb", "dataset=digits")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "noisybench: error: experiment=ref_dlb needs the values the DLB code (dlb.py) takes "
        "with no default and that are not stated here: set optim.optimizer.lr=... "
        "optim.scheduler.milestones=[...] epochs=... batch_size=... (docs/baselines.md, "
        "Reference protocols)"
    ]
    assert not any(tmp_path.iterdir())  # nothing written


# Digits smoke runs: the reference protocol's method, optimiser, schedule and loader settings
# train on the quickstart data (the small CNN stands in for the protocols' networks, to keep the
# test short; TE's 80 / 50-epoch ramps are shortened to the 2-epoch run, else its lr stays
# at exp(-5) of the maximum throughout).
SMOKE = {
    "te": [
        "model=small_cnn",
        "batch_size=128",
        "optim.scheduler.rampup_epochs=1",
        "optim.scheduler.rampdown_epochs=1",
        "optim.beta1_rampdown_epochs=1",
        "method.rampup_epochs=1",
    ],
    "dlb": [
        "optim.optimizer.lr=0.05",
        "optim.scheduler.milestones=[1]",
        "batch_size=64",
        "model=small_cnn",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMOKE))
def test_reference_protocol_trains_on_digits(name: str, tmp_path: Path) -> None:
    from noisybench.run import run_experiment

    overrides = [
        f"experiment=ref_{name}",
        "dataset=digits",
        "noise=sym50",
        "epochs=2",
        "dataset.reader.test_size=1297",  # 500 training images
        "progress=false",
        "logger=[]",
        "device=cpu",
        "cpu_threads=1",
        *SMOKE[name],
    ]
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    root = Path(__file__).resolve().parents[1]
    with initialize_config_dir(config_dir=str(root / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides)
    threads = torch.get_num_threads()
    try:
        result = run_experiment(cfg, run_dir=tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert result["status"] == "finished"
    history = result["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(math.isfinite(h["train/loss"]) for h in history)
    assert history[-1]["test/acc"] > 0.1  # better than chance (10 classes) after 2 epochs


def test_te_drop_last_reaches_the_loader() -> None:
    """The original's iterate_minibatches_augment_tempens yields only full batches: 500 // 128
    = 3 steps on 500 digits (4 without drop_last)."""
    from noisybench.build import build

    base = ["experiment=quickstart", "method=te", "batch_size=128", "logger=[]"]
    base += ["dataset.reader.test_size=1297", "progress=false", "cpu_threads=1"]  # 500 images
    assert len(build(compose([*base, "method.drop_last=true"])).source) == 3
    assert len(build(compose(base)).source) == 4
