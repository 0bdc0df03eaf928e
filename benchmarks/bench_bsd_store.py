"""Memory and time of BSD's per-sample store at ImageNet size (N = 1.28M, K = 1000), before
and after the store rework (issue 11 item 4), on the CPU.

Every case runs in a fresh subprocess; peak resident memory (``VmHWM``, reset between the
stages with ``/proc/self/clear_refs``) is reported above the RSS before setup (setup) or
above the store (later stages). ``old`` is ``noisybench/methods/bsd.py`` (and
``baselines/pskd.py``) as of git revision ``--old-rev`` (default c16c535, before the
rework), loaded with ``git show``; ``new`` is the working tree. The engine's label-recovery
path before the rework (``label_recovery(method.soft_targets(), ...)``) and PS-KD's old
setup (an int64 one-hot) would need ~20 GiB at full size, more than this shared machine
can spare, so they are measured at ``N / 10`` and marked ``"scaled_from_n"``; their memory
grows linearly with N (every temporary is ``(N, K)``).

    PYTHONPATH=$PWD python benchmarks/bench_bsd_store.py   # -> benchmarks/results/bsd_store.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "bsd_store.json"


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_mib() -> float:
    """Peak resident memory since the last :func:`_reset_peak` (``VmHWM``), MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _load(impl: str, rev: str, rel: str, name: str):
    if impl == "new":
        spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    else:
        src = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:{rel}"], check=True, capture_output=True
        ).stdout
        path = Path(tempfile.mkdtemp()) / Path(rel).name
        path.write_bytes(src)
        spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ctx(labels, k):
    import torch

    from noisybench.method import MethodContext

    return MethodContext(
        num_samples=labels.numel(),
        num_classes=k,
        noisy_labels=labels,
        device=torch.device("cpu"),
        epochs=90,
        steps_per_epoch=1,
    )


def case(impl: str, what: str, n: int, k: int, rev: str) -> dict:
    """Run one case in this process and return its numbers."""
    import torch

    from noisybench import metrics
    from noisybench.method import Batch, StepOutput

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, k, (n,), generator=gen)
    clean = torch.where(torch.rand(n, generator=gen) < 0.8, labels, (labels + 1) % k)
    res: dict = {"impl": impl, "case": what, "n": n, "k": k}
    base = _rss_mib()
    if what == "pskd_setup":
        mod = _load(impl, rev, "baselines/pskd.py", f"pskd_{impl}")
        method = mod.PSKD(alpha_T=0.3, store_dtype="float16")
        t0 = time.perf_counter()
        method.setup(_ctx(labels, k))
        res["setup_s"] = time.perf_counter() - t0
        res["setup_peak_mib"] = _peak_mib() - base
        res["store_mib"] = method.predictions.numel() * 2 / 2**20
        return res
    mod = _load(impl, rev, "noisybench/methods/bsd.py", f"bsd_{impl}")
    method = mod.BSD(gamma=0.99, c=400.0, eps=0.05, store_dtype="float16")
    t0 = time.perf_counter()
    method.setup(_ctx(labels, k))
    res["setup_s"] = time.perf_counter() - t0
    res["setup_peak_mib"] = _peak_mib() - base
    store = (method.targets.numel() * 2 + method.counts.numel() * 4) / 2**20
    res["store_mib"] = store
    if what == "bsd":
        _reset_peak()
        for b in (128, 1024):
            perm = torch.randperm(n, generator=gen)
            times = []
            for step in range(12):
                idx = perm[step * b : (step + 1) * b]
                probs = torch.softmax(torch.randn(b, k, generator=gen), dim=-1)
                batch = Batch(idx=idx, target=labels[idx], views={}, carried=0)
                out = StepOutput(loss=torch.zeros(()), logits=probs, state={"probs": probs})
                t0 = time.perf_counter()
                method.after_step(batch, out, 0)
                times.append(time.perf_counter() - t0)
            res[f"update_b{b}_ms"] = 1000 * sorted(times[2:])[len(times[2:]) // 2]
        res["update_peak_over_store_mib"] = _peak_mib() - base - store
        _reset_peak()
        t0 = time.perf_counter()
        logs = method.on_epoch_end(0)
        res["epoch_end_s"] = time.perf_counter() - t0
        res["epoch_end_peak_over_store_mib"] = _peak_mib() - base - store
        res["mean_A"] = float(logs["mean_A"])
    elif what == "recovery":
        _reset_peak()
        t0 = time.perf_counter()
        if impl == "old":
            rec = metrics.label_recovery(method.soft_targets(), labels, clean)
        else:
            rec = metrics.label_recovery_chunked(method, labels, clean)
        res["recovery_s"] = time.perf_counter() - t0
        res["recovery_peak_over_store_mib"] = _peak_mib() - base - store
        res["recovered"] = float(rec["recovered"])
    return res


def eq5_only(rev: str, k: int) -> dict:
    """Median time of ``discounted_update`` alone (no store gather / scatter), unique indices."""
    import torch

    torch.set_num_threads(1)
    out: dict = {}
    for impl in ("old", "new"):
        mod = _load(impl, rev, "noisybench/methods/bsd.py", f"bsd_eq5_{impl}")
        for b in (128, 1024):
            y = torch.softmax(torch.randn(b, k), -1)
            p = torch.softmax(torch.randn(b, k), -1)
            a = 100 * torch.rand(b)
            idx = torch.randperm(1_281_167)[:b]
            times = []
            for _ in range(31):
                t0 = time.perf_counter()
                mod.discounted_update(y, a, p, idx, 0.99)
                times.append(time.perf_counter() - t0)
            out[f"{impl}_b{b}_ms"] = 1000 * sorted(times)[15]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_281_167)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--old-rev", default="c16c535")
    parser.add_argument("--case", nargs=3, metavar=("IMPL", "WHAT", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--eq5-only", action="store_true", help="only add eq5_update_only_ms")
    args = parser.parse_args()
    if args.eq5_only:
        data = json.loads(OUT.read_text())
        data["eq5_update_only_ms"] = eq5_only(args.old_rev, args.k)
        OUT.write_text(json.dumps(data, indent=2) + "\n")
        print(json.dumps(data["eq5_update_only_ms"]))
        return
    if args.case:
        impl, what, n = args.case
        print(json.dumps(case(impl, what, int(n), args.k, args.old_rev)))
        return
    small = args.n // 10
    plan = [
        ("old", "bsd", args.n),
        ("new", "bsd", args.n),
        ("old", "recovery", small),
        ("new", "recovery", small),
        ("new", "recovery", args.n),
        ("old", "pskd_setup", small),
        ("new", "pskd_setup", small),
        ("new", "pskd_setup", args.n),
    ]
    results = []
    for impl, what, n in plan:
        cmd = [sys.executable, __file__, "--k", str(args.k), "--old-rev", args.old_rev]
        cmd += ["--case", impl, what, str(n)]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        row = json.loads(line.strip().splitlines()[-1])
        if n != args.n:
            row["scaled_from_n"] = n
        print(json.dumps(row), flush=True)
        results.append(row)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "machine": f"{platform.processor() or platform.machine()}, torch 1 thread",
                "old_rev": args.old_rev,
                "note": (
                    "MiB; setup_peak: VmHWM minus RSS before setup; *_over_store: the "
                    "stage's VmHWM minus RSS before setup minus the store"
                ),
                "results": results,
                "eq5_update_only_ms": eq5_only(args.old_rev, args.k),
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
