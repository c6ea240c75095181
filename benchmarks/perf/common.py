"""The shared row format of the speed benchmarks, so one command can print and record them all."""

from __future__ import annotations

import os
import platform
import resource
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Row:
    """One measured quantity, ours against a baseline measured in the same run.

    `ratio` is oriented so that larger is better for us (e.g. baseline_time / our_time), and
    `target` states the bar that ratio (or value) must reach, in words and as `target_ratio`.
    """

    area: str
    what: str
    ours: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ''
    ratio: float | None = None
    target: str = ''
    target_ratio: float | None = None
    notes: str = ''
    extra: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        if self.target_ratio is None or self.ratio is None:
            return None
        return self.ratio >= self.target_ratio


def timed(fn: Callable[[], object], repeat: int = 3, warmup: int = 1) -> float:
    """Best wall time of `repeat` calls after `warmup` calls (seconds)."""
    for _ in range(warmup):
        fn()
    best = float('inf')
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def peak_rss_mib(children: bool = False) -> float:
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024.0


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        mem_gib = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30
    except (ValueError, OSError):
        mem_gib = float('nan')
    return (
        f'{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB RAM, '
        f'Python {platform.python_version()}, {platform.system()} {platform.release()}'
    )
