"""Ctrl-C and SIGTERM as a request to stop at the next safe point, not an exception anywhere.

A KeyboardInterrupt raised at an arbitrary line can land inside a tracker's database write (a
child left RUNNING, "database is locked") or between a step's backward and its update (a
checkpoint of half a step). So while a suite runs, the first SIGINT or SIGTERM only sets a flag;
the engine checks it between two steps (checkpoints, raises), the runner between two runs. Any
further signal is ignored while the runs are closed and the outputs written, unless the first
one has not been acted on for ``FORCE_AFTER`` seconds (something is stuck): then it raises.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

FORCE_AFTER = 2.0


class StopRequest:
    """A context that turns SIGINT / SIGTERM into a flag; call it to take the request."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.taken = False
        self._at = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum, self._at = signum, time.monotonic()
        elif not self.taken and time.monotonic() - self._at >= FORCE_AFTER:
            self.taken = True
            raise KeyboardInterrupt

    def request(self) -> None:
        """Ask for a stop from the code itself (a pruner, a watcher), as a Ctrl-C would."""
        if self.signum is None:
            self.signum, self._at = signal.SIGINT, time.monotonic()

    def __call__(self) -> bool:
        """True once, for the first check after a signal: the caller stops there."""
        if self.signum is not None and not self.taken:
            self.taken = True
            return True
        return False

    def check(self) -> None:
        """Raise KeyboardInterrupt here if a stop was asked and nobody acted on it yet."""
        if self():
            raise KeyboardInterrupt
