"""Where an audit runs and in which dtype: `--device auto` and `--dtype auto` resolved once, in one place.

Users audit 7-70B checkpoints on GPUs, so `auto` (the default) takes CUDA whenever it is present and
bfloat16 there (half the memory and bandwidth of float32, and the dtype such checkpoints are trained in);
without CUDA it is the CPU in float32, where bfloat16 matmuls are slow on most CPUs and less exact.
The resolved values, not the flags, are what results.json, the report and the terminal show.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from auditor.errors import AuditInputError

DeviceFlag = Literal["cpu", "cuda", "auto"]
DtypeFlag = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Compute:
    """The device class ("cpu" or "cuda"), the weights' dtype, and the hardware's name, as an audit ran them."""

    device: Literal["cpu", "cuda"]
    dtype: torch.dtype
    name: str

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def describe(self) -> str:
        """One line for the terminal: `cuda (NVIDIA H200), bfloat16`."""
        return f"{self.device} ({self.name}), {self.dtype_name}"


def resolve_device(flag: DeviceFlag) -> Literal["cpu", "cuda"]:
    """`auto` is CUDA when torch sees a CUDA device, else the CPU; `cuda` without one is bad input."""
    if flag == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if flag == "cuda" and not torch.cuda.is_available():
        raise AuditInputError("--device cuda was given but no CUDA device is available (torch "
                              f"{torch.__version__} sees none). Use --device auto or --device cpu.")
    return flag


def resolve_dtype(flag: DtypeFlag, device: Literal["cpu", "cuda"]) -> torch.dtype:
    """`auto` is bfloat16 on CUDA and float32 on the CPU (see the module docstring for why)."""
    if flag != "auto":
        return DTYPES[flag]
    return torch.bfloat16 if device == "cuda" else torch.float32


def resolve(device: DeviceFlag, dtype: DtypeFlag) -> Compute:
    """Both flags resolved, with the name of the hardware they resolve to."""
    resolved = resolve_device(device)
    return Compute(resolved, resolve_dtype(dtype, resolved), hardware_name(resolved))


def hardware_name(device: Literal["cpu", "cuda"]) -> str:
    """The GPU's name (the first one: accelerate fills it first), or the CPU's model and core count, so a speed
    in results.json can be read against the machine that gave it."""
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{_cpu_model()}, {torch.get_num_threads()} threads"


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
