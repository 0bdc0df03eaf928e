"""Config-only commands (``--help``, ``--cfg``, ``--info``, ``-sc``, TAB completion) answer
without importing torch: they need Hydra and the YAML files only, and importing torch costs
seconds (``benchmarks/bench_cli.py`` times them). ``--help`` is rendered by noisybench itself,
and must print exactly the page Hydra renders from ``conf/hydra/help/noisybench.yaml``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs the command line in one process, then says whether torch was imported.
_PROBE = (
    "import runpy, sys\n"
    "sys.argv = ['noisybench', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('noisybench', run_name='__main__')\n"
    "except SystemExit:\n"
    "    pass\n"
    "print('TORCH_IMPORTED=%d' % ('torch' in sys.modules), file=sys.stderr)\n"
)


def _probe(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        cwd=ROOT,
        env=dict(os.environ, **(env or {})),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "env", "expect"),
    [
        (["--help"], {}, "Config groups"),
        (["--cfg", "job"], {}, "epochs: 300"),
        (["--cfg", "job", "--resolve", "experiment=quickstart", "method=bsd"], {}, "gamma: 0.85"),
        (["--info"], {}, "Defaults List"),
        (["-sc", "install=bash"], {}, "hydra_bash_completion"),
        (
            ["-sc", "query=bash"],
            {"COMP_LINE": "noisybench method=bsd method.g", "COMP_POINT": "30"},
            "method.gamma=",
        ),
    ],
)
def test_config_only_commands_do_not_import_torch(
    args: list[str], env: dict[str, str], expect: str
) -> None:
    proc = _probe(args, env)
    assert expect in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "TORCH_IMPORTED=0" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_help_page_is_the_page_hydra_renders() -> None:
    ours = _probe(["--help"]).stdout
    hydra = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.argv = ['noisybench', '--help']\n"
            "from noisybench import cli\ncli._run_hydra(True)",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "noisybench: learning with noisy labels" in hydra
    assert ours == hydra


@pytest.mark.parametrize(
    "overrides",
    [
        ["method=ce,bsd", "seed=0,1,2", "epochs=3"],
        ["+foo=1,2", "~bar", "a.b=[1,2]", "c=choice(3,4)", "d='x,y'"],
        ["x=range(0,3)", "y=1"],
    ],
)
def test_the_sweep_preflight_expands_jobs_as_hydras_basic_sweeper(overrides: list[str]) -> None:
    """The jobs the front door checks before a sweep starts are those Hydra's basic sweeper
    launches, in its order (Hydra's own sweeper, an internal module, as the second
    implementation; the front door uses only the public override parser)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from noisybench.cli import _sweep_jobs

    parsed = OverridesParser.create().parse_overrides(overrides=overrides)
    expected = [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    assert _sweep_jobs(overrides) == expected
