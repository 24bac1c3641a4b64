"""What the machine offers: peak resident memory, recorded by each stage in what it writes
(``make bench`` reads it), whether it computes bf16 natively, and worker processes that do
not outlive their stage."""

from __future__ import annotations

import ctypes
import os
import platform
import re
import resource
import signal
import sys
from pathlib import Path

import torch

# ru_maxrss is in KiB on Linux and in bytes on macOS
_MAXRSS_PER_MIB = 2**20 if sys.platform == "darwin" else 2**10


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int | None) -> None:
    """Worker initialiser: the kernel kills this process as soon as its parent dies, so a
    stage killed with SIGKILL leaves no worker writing files or blocked on its queue behind
    it. ``parent``: the pid the worker's parent must have (None where the parent is a fork
    server, not the stage). Linux only; elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # not fatal: the worker then only lacks the guarantee
    if parent is not None and os.getppid() != parent:  # it died before the request held
        os._exit(1)


def peak_rss() -> dict[str, float]:
    """Peak resident set size so far, in MiB: this process (imports and model included), and
    the largest of its finished child processes (workers; 0 when it started none)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "peak_rss_mib": round(own / _MAXRSS_PER_MIB, 1),
        "children_peak_rss_mib": round(children / _MAXRSS_PER_MIB, 1),
    }


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bf16 natively (x86 AVX512-BF16 or AMX; Linux /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def native_bf16(device: torch.device | str) -> bool:
    """Whether bf16 arithmetic is native, and so faster than fp32, on ``device``."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.device(device).type == "cpu" and cpu_has_bf16()


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what the platform module reports."""
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        found = None
    return found.group(1).strip() if found else (platform.processor() or platform.machine())


def cpu_vector_isa() -> str:
    """The widest x86 vector extension the CPU offers that matters to torch here ('' if
    unknown): AMX and AVX512-BF16 compute bf16 natively, AVX512 and AVX2 only fp32."""
    try:
        flags = set(re.findall(r"\w+", Path("/proc/cpuinfo").read_text()))
    except OSError:
        return ""
    order = ("amx_bf16", "avx512_bf16", "avx512f", "avx2", "avx")
    return next((flag for flag in order if flag in flags), "")


def machine() -> dict:
    """What a stage's time depends on: CPU model, cores torch may use, native bf16 (which
    ``model.bf16: auto`` and ``finetune.mixed_precision: auto`` follow)."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux: the cores this process may use
    return {
        "cpu": cpu_model(),
        "vector_isa": cpu_vector_isa(),
        "cores": len(affinity(0)) if affinity else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "native_bf16": native_bf16("cuda" if torch.cuda.is_available() else "cpu"),
    }
