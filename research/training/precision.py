"""Training precision: mixed bfloat16 where the CPU computes it natively, float32 elsewhere."""

from __future__ import annotations

from pathlib import Path


def cpu_has_bfloat16() -> bool:
    """Does this x86 CPU compute in bfloat16 natively (AVX512-BF16 or AMX)? Elsewhere the
    conversions cost more than they save."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def resolve_precision(precision: str) -> str:
    if precision == "auto":
        return "bfloat16" if cpu_has_bfloat16() else "float32"
    if precision not in ("bfloat16", "float32"):
        raise ValueError(f"precision must be 'auto', 'bfloat16' or 'float32', not {precision!r}")
    return precision
