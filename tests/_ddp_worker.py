"""Worker of tests/test_distributed.py, started by ``torch.distributed.run``: trains each
experiment given on the command line (``;``-separated override lists) with
:func:`noisybench.build.build` and the engine, then saves this process's history, method
state and model state to ``<out>/<experiment number>.rank<rank>.pt``. Not a test module."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from noisybench import distributed
from noisybench.build import build
from noisybench.config import compose


def main() -> None:
    out = Path(sys.argv[1])
    distributed.init("gloo")
    for number, spec in enumerate(" ".join(sys.argv[2:]).split(";")):
        exp = build(compose(spec.split()))
        history = exp.trainer().fit()
        torch.save(
            {
                "history": history,
                "method": exp.method.state_dict(),
                "model": exp.model.state_dict(),
                "world": distributed.world_size(),
            },
            out / f"{number}.rank{distributed.rank()}.pt",
        )
        del exp, history  # the DDP wrapper goes before its process group (as in the CLI)
    distributed.shutdown()


if __name__ == "__main__":
    main()
