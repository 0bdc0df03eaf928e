"""The comparison methods (installed as ``noisybench.baselines``).

:data:`CODE_DEFAULTS`: for the baselines whose per-setting values come from their authors
(``conf/baseline_presets.yaml``, ``${authors:KEY}``), the values their code uses when nothing
is said (argparse defaults / the CIFAR-10 config), as command-line overrides. A run on a
dataset the authors never used (digits, synthetic: tests, benchmarks) is refused without
explicit values; these are the explicit values such runs give.
"""

from __future__ import annotations

__all__ = ["CODE_DEFAULTS"]

CODE_DEFAULTS: dict[str, list[str]] = {
    # LiJunnan1992/DivideMix Train_cifar.py argparse defaults (warm_up 10: its cifar10 value)
    "dividemix": [
        "method.lambda_u=25",
        "method.p_threshold=0.5",
        "method.warm_up=10",
        "method.loss_history=1",
        "method.confidence_penalty=false",
    ],
    # DULC: UNICON Train_cifar.py's cifar10 warm-up (DULC's own code could not be read)
    "dulc": ["method.warm_up=10"],
    # changwxx/CSOT-for-LNL main_cifar.py (warm_up 10: its cifar10 value; NegEntropy: asym only)
    "csot": ["method.warm_up=10", "method.confidence_penalty=false"],
    # shengliu66/ELR ELR/config_cifar10.json
    "elr": ["method.beta=0.7", "method.lam=3"],
    # ryl0427/Code-for-OT-Filter Train_CIFAR.py (warm_up = 10: its cifar10 value)
    "otfilter": ["method.warm_up=10"],
}
