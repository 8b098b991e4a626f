"""Start-up time, importable before anything heavy (bench/everyday.py's bare loop uses it too)."""

from __future__ import annotations

import os
import time
from pathlib import Path

_IMPORTED = time.perf_counter()


def seconds_since_process_start() -> float:
    """Seconds since this process was created (interpreter start and every import included), from
    /proc on Linux (10 ms resolution); elsewhere since this module was imported."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        return float(Path("/proc/uptime").read_text().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED
