"""What the CPU offers the networks: bf16 arithmetic, and how many cores this process may use."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX-512 BF16 or AMX), where bf16 autocast pays."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
