"""Peak memory of one phase: resident set size (Linux VmHWM) and CUDA max allocated."""

from __future__ import annotations

import re
import resource
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    """Linux resets VmHWM to the current RSS when "5" is written to clear_refs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """`with PeakMemory() as m: ...` then m.as_dict(): MiB at start, peak, and peak - start.

    Where the peak cannot be reset (not Linux) the RSS peak is the process's
    lifetime peak, and `rss_peak_is_lifetime` says so."""

    def __enter__(self) -> PeakMemory:
        self.lifetime = not _reset_peak_rss()
        self.rss_start = _status_kib("VmRSS")
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.cuda_start = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc) -> None:
        peak = _status_kib("VmHWM")
        self.rss_peak = peak if peak is not None and not self.lifetime else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if self.cuda:
            torch.cuda.synchronize()
            self.cuda_peak = torch.cuda.max_memory_allocated()

    def as_dict(self) -> dict:
        mib = 1024 * 1024
        out = {"rss_start_mib": (self.rss_start or 0) / 1024, "rss_peak_mib": self.rss_peak / 1024,
               "rss_added_mib": max(0, self.rss_peak - (self.rss_start or 0)) / 1024, "rss_peak_is_lifetime": self.lifetime}
        if self.cuda:
            out.update(cuda_start_mib=self.cuda_start / mib, cuda_max_allocated_mib=self.cuda_peak / mib,
                       cuda_added_mib=(self.cuda_peak - self.cuda_start) / mib)
        return out
