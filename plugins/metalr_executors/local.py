"""The ``local`` executor: sweep points in a pool of worker processes on this machine.

Workers are spawned, not forked: a fork of a process that has started torch's threads or the
MLflow tracker's sender thread can deadlock, and spawn is what macOS and Windows do anyway.
Each worker runs torch with one thread, so N workers use N cores without oversubscribing them
(small models gain nothing from more threads; a sweep gains from more points at once).

Ctrl-C: the terminal sends SIGINT to the workers too, and each running point stops at its next
step, checkpointed, its runs marked KILLED. A worker ignores SIGINT between points (the runner
handles it while a point runs), so a signal never kills a worker inside the pool's own queues;
the pool also forwards SIGINT to its workers, for an interrupt sent to this process alone
(``kill -INT``). Points not started are cancelled; the pool waits for the running ones to end.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class LocalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workers: int | None = Field(None, ge=1, le=1024,
                                description="processes at once; unset: the number of CPU cores")


def _worker_setup() -> None:
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner takes it while a point runs


class LocalExecutor:
    def __init__(self, workers: int | None = None):
        self.workers = workers or os.cpu_count() or 1

    def run(self, call: Callable[[Any], Any], items: Sequence[Any],
            folder: Path) -> Iterator[Any]:
        """Yield each point's result as it ends; ``folder`` is unused (the pool keeps no files)."""
        if not items:
            return
        pool = ProcessPoolExecutor(max_workers=min(self.workers, len(items)),
                                   mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_setup)
        futures = [pool.submit(call, item) for item in items]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:  # Ctrl-C here, or the caller stopped early (GeneratorExit)
            for future in futures:
                future.cancel()
            # the pool's processes are private; this is the one way to reach its workers
            for process in list(getattr(pool, "_processes", {}).values()):
                with contextlib.suppress(OSError):
                    os.kill(process.pid, signal.SIGINT)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
