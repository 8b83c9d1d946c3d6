"""What the CPU offers the networks: bf16 arithmetic, and how many cores this process may use."""

from __future__ import annotations

import logging
import math
import os
import time
from functools import lru_cache
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# The flags alone are a guess at where bf16 autocast pays, and a hypervisor can make it wrong: on an AMD EPYC
# with AVX-512 BF16 a DeepLab training step took 4.2 s in bf16, but on an Intel Xeon (model 207) whose AMX the
# hypervisor hides it took 11.2 s in bf16 against 7.1 s in float32 (benchmarks/training_step.py), and the
# served DeepLab's network 0.40 s against 0.23 s. So where the flags say yes, a short timing decides.
# SEGMENTATION_BF16=0 (or 1) overrides both for training and serving alike.
BF16_VARIABLE = "SEGMENTATION_BF16"
# Rounds of the timing (each times one float32 and one bf16 pass; the fastest of each counts).
BF16_PROBE_ROUNDS = 5

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX-512 BF16 or AMX), where bf16 autocast may pay."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_setting() -> bool | None:
    """SEGMENTATION_BF16 read as a switch: True, False, or None when unset; ValueError for anything else."""
    setting = os.environ.get(BF16_VARIABLE, "").strip().lower()
    if setting in {"0", "false", "no", "off"}:
        return False
    if setting in {"1", "true", "yes", "on"}:
        return True
    if setting:
        raise ValueError(f"{BF16_VARIABLE} must be 0 or 1 (or unset to follow the CPU), not {setting!r}")
    return None


@lru_cache(maxsize=1)
def bf16_measured_faster() -> bool:
    """Whether a small convolution block ran faster under bf16 autocast than in float32 here (timed once)."""
    import torch  # here, not at the top: the bot imports this package without torch

    # Two ResNet-sized 3x3 convolutions in channels_last, as the networks run; forked RNG: training's
    # seeded stream must not depend on whether this ran.
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        block = torch.nn.Sequential(
            torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 3, padding=1)
        ).to(memory_format=torch.channels_last)
        batch = torch.rand(1, 64, 72, 96).contiguous(memory_format=torch.channels_last)
        fastest = {False: math.inf, True: math.inf}
        for _ in range(BF16_PROBE_ROUNDS):  # interleaved, so a burst of load from elsewhere hits both
            for bf16 in (False, True):
                started = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    block(batch)
                fastest[bf16] = min(fastest[bf16], time.perf_counter() - started)
    faster = fastest[True] < fastest[False]
    logger.info(
        "bf16 autocast %s: a probe convolution took %.1f ms in bf16, %.1f ms in float32",
        "on" if faster else "off",
        fastest[True] * 1000,
        fastest[False] * 1000,
    )
    return faster


def use_bf16() -> bool:
    """Whether to run the networks under bf16 autocast: SEGMENTATION_BF16 if set, else native bf16 that times faster."""
    setting = bf16_setting()
    if setting is not None:
        return setting
    return cpu_supports_bf16() and bf16_measured_faster()


def prefers_channels_last() -> bool:
    """Whether float32 convolutions run faster in channels_last here: on AVX-512 BF16 CPUs, measured.

    On an Intel Xeon with AVX-512 BF16 a float32 DeepLab training step took 7.1 s against 8.4 s and the served
    network 0.23 s against 0.27 s; on an AVX2-only CPU channels_last was 0-25% slower (training).
    """
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
