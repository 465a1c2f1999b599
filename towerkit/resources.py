"""How much memory this machine can give a run, for checks made before any work starts.

TensorFlow-free, so recipe validation and tower construction can refuse a
value that would exhaust the machine (an out-of-memory kill, or a crash in
TensorFlow's allocator) with one clear error instead.
"""

from __future__ import annotations

import os
from pathlib import Path

# Weights, their gradients and the optimizer's slots (Adagrad keeps one, Adam two):
# a table of N float32 values needs about this many times 4 * N bytes while training.
TRAINING_COPIES = 3
FLOAT_BYTES = 4


def _meminfo_available() -> int | None:
    try:
        text = Path("/proc/meminfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return None


def _cgroup_available() -> int | None:
    """Room left under a cgroup v2 memory limit (containers), if there is one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text(encoding="ascii").strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text(encoding="ascii").strip()
    except OSError:
        return None
    if not limit.isdigit() or not used.isdigit():
        return None  # "max": no limit
    return max(0, int(limit) - int(used))


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def available_memory_bytes() -> int | None:
    """Bytes a new allocation can use now, or None where the system does not say.

    The smallest of ``MemAvailable`` (``/proc/meminfo``), the room under a
    cgroup v2 limit, and, where neither is readable, the physical memory.
    """
    known = [value for value in (_meminfo_available(), _cgroup_available()) if value is not None]
    if known:
        return min(known)
    return _physical_memory()


def training_bytes(num_floats: int) -> int:
    """Estimated bytes to train a float32 tensor of ``num_floats`` values (see TRAINING_COPIES)."""
    return num_floats * FLOAT_BYTES * TRAINING_COPIES


def format_bytes(size: int) -> str:
    """``size`` in the largest binary unit that keeps it at least 1, e.g. ``'11.2 GiB'``."""
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:,.0f} {unit}" if unit == "bytes" else f"{value:,.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
