"""What the CPU offers the networks: bf16 arithmetic, and how many cores this process may use."""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# The flags are a guess at where bf16 autocast pays, and a hypervisor can make it wrong: on an AMD EPYC with
# AVX-512 BF16 a DeepLab training step took 4.2 s in bf16, but on an Intel Xeon (model 207) whose AMX the
# hypervisor hides it took 11.2 s in bf16 against 7.1 s in float32 (benchmarks/training_step.py).
# SEGMENTATION_BF16=0 (or 1) overrides the guess for training and serving alike.
BF16_VARIABLE = "SEGMENTATION_BF16"


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX-512 BF16 or AMX), where bf16 autocast pays."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16() -> bool:
    """Whether to run the networks under bf16 autocast here: SEGMENTATION_BF16 (0 or 1) if set, else native bf16."""
    setting = os.environ.get(BF16_VARIABLE, "").strip().lower()
    if setting in {"0", "false", "no", "off"}:
        return False
    if setting in {"1", "true", "yes", "on"}:
        return True
    if setting:
        raise ValueError(f"{BF16_VARIABLE} must be 0 or 1 (or unset to follow the CPU), not {setting!r}")
    return cpu_supports_bf16()


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The container's CPU quota in cores (cgroup v2 cpu.max, else v1 CFS quota/period), or None if unlimited."""
    v2 = _read(root / "cpu.max")  # "max 100000" (no limit) or "150000 100000" (1.5 cores)
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        if quota != "max":
            try:
                return int(quota) / int(period or 100_000)
            except (ValueError, ZeroDivisionError):
                return None
        return None
    for folder in (root / "cpu", root / "cpu,cpuacct", root):  # v1 mounts the controller under one of these
        quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota is None or period is None:
            continue
        try:
            quota_us, period_us = int(quota), int(period)
        except ValueError:
            return None
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None  # -1: no limit
    return None


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """Cores this process may really use: the affinity mask, capped by a container's CPU quota; at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        # A 1.5-core quota still lets two threads make progress; rounding down would leave half a core idle.
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


def configure_torch_threads(workers: int, override: int = 0) -> int:
    """Set torch's intra-op threads for `workers` concurrent inferences (or to `override`); returns the count."""
    import torch  # here, not at the top: the bot imports this package without torch

    threads = override if override > 0 else max(1, available_cpus() // max(1, workers))
    if torch.get_num_threads() != threads:  # setting it again rebuilds torch's thread pool
        torch.set_num_threads(threads)
    return threads
