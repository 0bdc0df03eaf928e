"""How fast the config-only commands answer, and whether they import torch.

``python benchmarks/bench_cli.py [--repeats 5] [--src DIR] [--label NAME]`` runs each command
(``--help``, ``--cfg job``, ``--cfg job --resolve`` with an experiment, ``--info``,
``-sc install=bash``, and a TAB completion query) ``--repeats`` times in a fresh process and
records the median wall time and whether ``torch`` was imported, in
``benchmarks/results/cli_latency.json`` (one entry per ``--label``). ``--src DIR`` measures
another checkout's code (e.g. a ``git worktree`` of an older commit). Nothing here trains.

Printing a config or a help page needs Hydra and the YAML files only; importing torch costs
seconds (and on a cluster's shared filesystem often tens of seconds), so these commands
must not import it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "cli_latency.json"

COMMANDS: dict[str, tuple[list[str], dict[str, str]]] = {
    "--help": (["--help"], {}),
    "--cfg job": (["--cfg", "job"], {}),
    "--cfg job --resolve (quickstart, bsd)": (
        ["--cfg", "job", "--resolve", "experiment=quickstart", "method=bsd"],
        {},
    ),
    "--info": (["--info"], {}),
    "-sc install=bash": (["-sc", "install=bash"], {}),
    "TAB completion (noisybench method=bsd method.g)": (
        ["-sc", "query=bash"],
        {"COMP_LINE": "noisybench method=bsd method.g", "COMP_POINT": "30"},
    ),
}

# Runs the command line in this process and reports, on the last stderr line, whether torch
# was imported by the time it returned.
_PROBE = (
    "import runpy, sys\n"
    "sys.argv = ['noisybench', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('noisybench', run_name='__main__')\n"
    "except SystemExit:\n"
    "    pass\n"
    "print('TORCH_IMPORTED=%d' % ('torch' in sys.modules), file=sys.stderr)\n"
)


def _env(src: Path | None, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    return env


def imports_torch(args: list[str], extra: dict[str, str], src: Path | None) -> bool:
    """Whether the command imports torch (run through the probe above)."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        env=_env(src, extra),
        capture_output=True,
        text=True,
        cwd=src or ROOT,
        timeout=120,
    )
    return "TORCH_IMPORTED=1" in proc.stderr


def wall_time(args: list[str], extra: dict[str, str], src: Path | None) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "noisybench", *args],
        env=_env(src, extra),
        capture_output=True,
        cwd=src or ROOT,
        timeout=120,
        check=False,
    )
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--src", type=Path, default=None, help="checkout whose code to time")
    parser.add_argument("--label", default="now")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    rows = {}
    for name, (cmd, extra) in COMMANDS.items():
        times = [wall_time(cmd, extra, args.src) for _ in range(args.repeats)]
        rows[name] = {
            "median_s": round(statistics.median(times), 3),
            "min_s": round(min(times), 3),
            "imports_torch": imports_torch(cmd, extra, args.src),
        }
        print(
            f"{name:<50} median {rows[name]['median_s']:6.2f} s  min "
            f"{rows[name]['min_s']:6.2f} s  torch imported: {rows[name]['imports_torch']}"
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    entry = {
        "commands": rows,
        "repeats": args.repeats,
        "load_average_1min": load,
        "python": sys.version.split()[0],
    }
    if not args.no_write:
        data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        data[args.label] = entry
        RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
