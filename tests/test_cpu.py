"""How many cores torch may use: the affinity mask, capped by a container's cgroup CPU quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from segmentation import cpu
from segmentation.cpu import BF16_VARIABLE, available_cpus, cgroup_cpu_limit, configure_torch_threads, use_bf16


@pytest.fixture
def eight_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the affinity mask holds eight cores, whatever this machine has."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


@pytest.mark.parametrize(
    ("files", "limit", "cores"),
    [
        pytest.param({"cpu.max": "200000 100000"}, 2.0, 2, id="v2-two-cores"),
        pytest.param({"cpu.max": "150000 100000"}, 1.5, 2, id="v2-one-and-a-half-rounds-up"),
        pytest.param({"cpu.max": "50000 100000"}, 0.5, 1, id="v2-half-a-core-is-one-thread"),
        pytest.param({"cpu.max": "max 100000"}, None, 8, id="v2-unlimited"),
        pytest.param({"cpu.max": "3000000 100000"}, 30.0, 8, id="v2-quota-above-affinity"),
        pytest.param({"cpu/cpu.cfs_quota_us": "300000", "cpu/cpu.cfs_period_us": "100000"}, 3.0, 3, id="v1-three"),
        pytest.param(
            {"cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
            None,
            8,
            id="v1-unlimited",
        ),
        pytest.param({}, None, 8, id="no-cgroup-files"),
        pytest.param({"cpu.max": "garbage"}, None, 8, id="v2-unreadable"),
    ],
)
def test_available_cpus_honours_the_cgroup_quota(
    tmp_path: Path, eight_cores: None, files: dict[str, str], limit: float | None, cores: int
) -> None:
    for relative, text in files.items():
        write(tmp_path, relative, text)
    assert cgroup_cpu_limit(tmp_path) == limit
    assert available_cpus(tmp_path) == cores


def test_affinity_caps_the_count_below_the_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    write(tmp_path, "cpu.max", "400000 100000")
    assert available_cpus(tmp_path) == 1


@pytest.mark.parametrize(
    ("cores", "workers", "override", "expected"), [(8, 1, 0, 8), (8, 3, 0, 2), (2, 4, 0, 1), (8, 2, 5, 5)]
)
def test_configure_torch_threads_divides_the_cores_among_workers(
    monkeypatch: pytest.MonkeyPatch, cores: int, workers: int, override: int, expected: int
) -> None:
    monkeypatch.setattr(cpu, "available_cpus", lambda: cores)
    before = torch.get_num_threads()
    try:
        assert configure_torch_threads(workers, override) == expected
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("setting", "native_bf16", "expected"),
    [
        pytest.param(None, True, True, id="unset-follows-the-cpu"),
        pytest.param(None, False, False, id="unset-without-bf16-units"),
        pytest.param("0", True, False, id="off-where-bf16-is-slower"),
        pytest.param(" Off ", True, False, id="off-spelt-out"),
        pytest.param("1", False, True, id="on-forced"),
    ],
)
def test_bf16_follows_the_cpu_unless_the_variable_says(
    monkeypatch: pytest.MonkeyPatch, setting: str | None, native_bf16: bool, expected: bool
) -> None:
    monkeypatch.setattr(cpu, "cpu_supports_bf16", lambda: native_bf16)
    if setting is None:
        monkeypatch.delenv(BF16_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(BF16_VARIABLE, setting)
    assert use_bf16() is expected


def test_a_bf16_setting_that_is_not_a_switch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BF16_VARIABLE, "maybe")
    with pytest.raises(ValueError, match="SEGMENTATION_BF16 must be 0 or 1"):
        use_bf16()
