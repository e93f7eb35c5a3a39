"""Long work in a background thread, with progress and cancel, for the dashboard.

A Job runs `fn(*args, progress=..., cancel=..., **kwargs)`; the page that
started it reads `status`, `progress` and `result` on each redraw, so the
browser never waits on the work and two tabs can each run their own job.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from .evaluate import Cancelled


@dataclass
class Job:
    label: str
    status: str = "pending"  # pending | running | done | failed | cancelled
    done: int = 0
    total: int = 0
    message: str = ""
    result: object = None
    error: str = ""
    started: float = 0.0
    finished: float = 0.0
    cancel: threading.Event = field(default_factory=threading.Event)
    config: object = None  # what the job was started with, for whoever keeps its result
    collected: bool = False  # set by the page once it has kept the result
    run_id: str | None = None  # the run store's record of this job, if any

    def start(self, fn, *args, **kwargs) -> Job:
        self.status, self.started = "running", time.time()

        def work():
            try:
                self.result = fn(*args, progress=self._progress, cancel=self.cancel, **kwargs)
                self.status = "done"
            except Cancelled:
                self.status = "cancelled"
            except Exception as exc:  # noqa: BLE001 - shown to the user as one sentence
                self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"
            finally:
                self.finished = time.time()

        threading.Thread(target=work, name=f"job {self.label}", daemon=True).start()
        return self

    def _progress(self, done: int, total: int, message: str) -> None:
        self.done, self.total, self.message = done, total, message

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def elapsed(self) -> float:
        return (self.finished or time.time()) - self.started if self.started else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left, extrapolated from the modules done so far."""
        if not self.running or self.done == 0 or self.total == 0:
            return None
        return self.elapsed * (self.total - self.done) / self.done

    def wait(self, timeout: float | None = None) -> str:
        end = None if timeout is None else time.time() + timeout
        while self.status in ("pending", "running") and (end is None or time.time() < end):
            time.sleep(0.05)
        return self.status
