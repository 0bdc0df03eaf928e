"""The reference protocols (experiment=ref_<method>) against their sources, written out here:
GCE (AlanChou/Truncated-Loss main.py defaults and README commands, unofficial), ELR
(shengliu66/ELR config_cifar10.json), Co-teaching (bhanML/Co-teaching main.py), DivideMix (the
paper Sec. 4.1 and Train_cifar.py), SCE (train_models.py, util.get_lr_scheduler), PS-KD / LS
(lgcnsai/PS-KD-Pytorch README), mixup (facebookresearch/mixup-cifar10 train.py), CSOT
(changwxx/CSOT-for-LNL main_cifar.py)."""

from __future__ import annotations

import pytest

from noisybench.config import compose, resolved

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
