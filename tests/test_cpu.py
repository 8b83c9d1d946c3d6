"""How many cores torch may use: the affinity mask, capped by a container's cgroup CPU quota."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segmentation import cpu
from segmentation.cpu import (
    BF16_VARIABLE,
    available_cpus,
    bf16_setting,
    cgroup_cpu_limit,
    configure_torch_threads,
    use_bf16,
)


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
    ("setting", "native_bf16", "times_faster", "expected"),
    [
        pytest.param(None, True, True, True, id="unset-native-and-faster"),
        pytest.param(None, True, False, False, id="unset-native-but-slower"),
        pytest.param(None, False, None, False, id="unset-without-bf16-units"),
        pytest.param("0", True, None, False, id="off-where-bf16-is-slower"),
        pytest.param(" Off ", True, None, False, id="off-spelt-out"),
        pytest.param("1", False, None, True, id="on-forced"),
    ],
)
def test_bf16_follows_the_cpu_and_its_timing_unless_the_variable_says(
    monkeypatch: pytest.MonkeyPatch, setting: str | None, native_bf16: bool, times_faster: bool | None, expected: bool
) -> None:
    def probe() -> bool:
        # None: the case must be decided without timing anything (the flags or the variable settle it).
        assert times_faster is not None, "timed bf16 where the flags or the variable had already decided"
        return times_faster

    monkeypatch.setattr(cpu, "cpu_supports_bf16", lambda: native_bf16)
    monkeypatch.setattr(cpu, "bf16_measured_faster", probe)
    if setting is None:
        monkeypatch.delenv(BF16_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(BF16_VARIABLE, setting)
    assert use_bf16() is expected


def test_the_bf16_timing_reports_its_figures_and_leaves_the_random_stream_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    with caplog.at_level(logging.INFO, logger="segmentation.cpu"):
        verdict = cpu.bf16_measured_faster.__wrapped__()  # uncached: really time it
    assert isinstance(verdict, bool)
    # A seeded training run draws the same samples whether or not the probe ran first.
    assert torch.equal(torch.rand(3), expected)
    message = caplog.records[-1].getMessage()
    figures = r"a probe convolution took [\d.]+ ms in bf16, [\d.]+ ms in float32"
    assert re.fullmatch(rf"bf16 autocast (on|off): {figures}", message)
    assert message.startswith(f"bf16 autocast {'on' if verdict else 'off'}")


def test_the_bf16_setting_is_read_without_timing_or_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_timing() -> bool:
        raise AssertionError("reading the setting timed bf16")

    monkeypatch.setattr(cpu, "bf16_measured_faster", no_timing)
    monkeypatch.delenv(BF16_VARIABLE, raising=False)
    assert bf16_setting() is None
    monkeypatch.setenv(BF16_VARIABLE, "yes")
    assert bf16_setting() is True
    # The bot reads it at start-up before any network loads: in a fresh interpreter torch stays unimported.
    probe = "import sys; from segmentation.cpu import bf16_setting; print(bf16_setting(), 'torch' in sys.modules)"
    environment = {**os.environ, BF16_VARIABLE: "0"}
    shown = subprocess.run([sys.executable, "-c", probe], env=environment, capture_output=True, text=True, check=True)
    assert shown.stdout.split() == ["False", "False"]


def test_a_bf16_setting_that_is_not_a_switch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BF16_VARIABLE, "maybe")
    with pytest.raises(ValueError, match="SEGMENTATION_BF16 must be 0 or 1"):
        use_bf16()
