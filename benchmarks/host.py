"""The machine a benchmark runs on: its CPU, the CPU time other processes take, this process's peak memory.

On a shared host other tenants' work slows every timing down; a benchmark waits for the CPUs to go quiet
before each timed phase (``wait_until_quiet``) and reports the load that remained (``ForeignLoad``).
"""

from __future__ import annotations

import os
import platform
import resource
import time
from pathlib import Path

FOREIGN_LOAD_WARN_CORES = 0.1


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def busy_cpu_s() -> float:
    """Non-idle CPU seconds of the whole machine so far (all cores), from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class ForeignLoad:
    """CPU time other processes took while a block ran, in cores (0 = the machine was ours alone)."""

    def __enter__(self) -> ForeignLoad:
        self.busy, self.own, self.wall = busy_cpu_s(), own_cpu_s(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.wall
        self.cores = max(0.0, (busy_cpu_s() - self.busy) - (own_cpu_s() - self.own)) / wall


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def wait_until_quiet(max_wait_s: float, quiet_s: float = 2.0) -> float:
    """Waits up to ``max_wait_s`` for other processes to leave the CPUs idle; returns the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait_s:
        with ForeignLoad() as load:
            time.sleep(quiet_s)
        if load.cores <= FOREIGN_LOAD_WARN_CORES / 2:
            break
    return time.perf_counter() - start
