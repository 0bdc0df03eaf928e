"""What a result file says about where, when and at what cost a run was computed.

Numbers under label noise depend on the seed and on the hardware, and a comparison is only
reproducible when its cost is stated (issue 22: "nobody can say what a comparison cost or on
what it ran"). :func:`result_fields` is the one place that produces these keys of
``result.json``; the result writer adds them to every write.

Schema versions of ``result.json`` (``schema_version``; the report reads all of them):

1. noisybench 0.2: no ``schema_version`` key; ``status``, ``config``, ``seeds``, ``noise``,
   ``history`` (with ``epoch_time_s`` per epoch), ``last``, ``best``, ``selection``,
   ``wall_time_s``, ``device``.
2. adds ``schema_version``, ``environment`` (python, torch, torchvision, CUDA, cuDNN, device
   name, host, platform), ``started_at`` / ``ended_at`` (UTC, ISO 8601; ``ended_at`` once the
   run stopped) and ``cost`` (``train_time_s``: the summed epoch times, training plus the
   per-epoch evaluation; ``images_per_s``: training images seen per second of it;
   ``peak_memory_bytes`` and what it measures: CUDA's peak allocation on a GPU, the process's
   peak resident set on a CPU).
"""

from __future__ import annotations

import datetime
import functools
import platform
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["SCHEMA_VERSION", "cost", "environment", "result_fields"]

SCHEMA_VERSION = 2


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="seconds")


def _cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def environment(device: str) -> dict[str, Any]:
    """Library versions, the device's name and the host (computed once per device)."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": None,
        "cuda": torch.version.cuda,
        "cudnn": None,
        "device": device,
        "device_name": _cpu_name(),
        "host": socket.gethostname(),
        "platform": f"{sys.platform} {platform.release()}",
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if torch.backends.cudnn.is_available():
        info["cudnn"] = torch.backends.cudnn.version()
    if device.startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _peak_memory(device: str) -> tuple[int | None, str]:
    """Peak memory so far: CUDA's allocator peak on a GPU, else the process's peak RSS."""
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.max_memory_allocated(torch.device(device))), "cuda allocated"
    try:
        import resource
    except ImportError:  # not on POSIX
        return None, "unknown"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(rss if sys.platform == "darwin" else rss * 1024), "process peak RSS"


def cost(history: Sequence[Mapping[str, Any]], train_images: int | None) -> dict[str, Any]:
    """Training time (the summed ``epoch_time_s`` of ``history``) and training images per
    second (``train_images`` per epoch); None where unknown."""
    times = [r.get("epoch_time_s") for r in history]
    known = [float(t) for t in times if isinstance(t, int | float) and not isinstance(t, bool)]
    train_time = round(sum(known), 3) if known and len(known) == len(times) else None
    rate = None
    if train_time and train_images:
        rate = round(train_images * len(history) / train_time, 1)
    return {"train_time_s": train_time, "images_per_s": rate}


def result_fields(
    header: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    started: float,
    ended: float | None,
) -> dict[str, Any]:
    """The schema-2 keys of a result file: ``schema_version``, ``environment``,
    ``started_at``, ``ended_at`` and ``cost`` (see the module docstring)."""
    device = str(header.get("device") or "cpu")
    peak, kind = _peak_memory(device)
    train_images = header.get("train_images")
    return {
        "schema_version": SCHEMA_VERSION,
        "environment": environment(device),
        "started_at": _iso(started),
        "ended_at": _iso(ended),
        "cost": {
            **cost(history, train_images if isinstance(train_images, int) else None),
            "peak_memory_bytes": peak,
            "peak_memory_of": kind,
        },
    }
