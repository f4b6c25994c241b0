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

Workers die with their parent: a ``kill -9`` of ``metalr sweep`` would otherwise leave them
training on, orphans holding memory and the caller's stdout (the pool's queues never report the
parent gone). Each worker watches for it twice: on Linux the kernel signals it the moment the
parent dies (``prctl(PR_SET_PDEATHSIG)``), and everywhere a thread polls ``os.getppid()``. An
orphan sends itself SIGTERM, which the runner takes as a stop request (the point checkpoints and
marks its runs KILLED; an idle worker just ends), exits once its point has returned, and is
ended outright ``ORPHAN_GRACE`` seconds later whatever it is doing.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class LocalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workers: int | None = Field(None, ge=1, le=1024,
                                description="processes at once; unset: the number of CPU cores")


ORPHAN_GRACE = 30.0
"""Seconds an orphaned worker's point has to stop (a step, a checkpoint, its runs closed)."""
ORPHAN_POLL = 0.5
"""Seconds between two checks of ``os.getppid()`` (the fallback where the kernel tells nothing)."""
NO_PDEATHSIG_ENV = "METALR_FAULT_NO_PDEATHSIG"
"""Test hook: set to 1 to skip ``prctl``, leaving the polling thread alone to notice."""
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_parent: int | None = None  # the pool's process, as it was when it spawned this worker
_orphaned = threading.Lock()  # held once the worker has begun to end


def _worker_setup(parent: int) -> None:
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner takes it while a point runs
    _die_with(parent)


def _die_with(parent: int) -> None:
    """End this worker when ``parent`` ends: the kernel's signal on Linux, a polling thread
    everywhere. ``parent`` is the pid the pool had before spawning, so a parent that died before
    this ran is seen too (``getppid`` is already another process)."""
    global _parent
    _parent = parent
    if sys.platform.startswith("linux") and os.environ.get(NO_PDEATHSIG_ENV) != "1":
        with contextlib.suppress(OSError, AttributeError, ValueError):
            import ctypes

            # SIGUSR1, checked against getppid, not SIGTERM itself: the kernel also sends it
            # when the *thread* that spawned us ends while its process lives on
            signal.signal(signal.SIGUSR1, lambda signum, frame: _check_parent())
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGUSR1, 0, 0, 0)
    threading.Thread(target=_poll_parent, name="metalr-orphan-watch", daemon=True).start()
    _check_parent()


def _poll_parent() -> None:
    while not _check_parent():
        time.sleep(ORPHAN_POLL)


def _check_parent() -> bool:
    """True, having begun to end this worker, when the parent is gone."""
    if os.getppid() == _parent:
        return False
    if _orphaned.acquire(blocking=False):  # once: a second SIGTERM would force an exception
        timer = threading.Timer(ORPHAN_GRACE, os._exit, args=(1,))
        timer.daemon = True
        timer.start()
        os.kill(os.getpid(), signal.SIGTERM)  # a point stops at its next step, checkpointed
    return True


def _run_item(call: Callable[[Any], Any], item: Any) -> Any:
    """``call(item)`` in a worker; an orphan exits as soon as it returns (nobody waits)."""
    try:
        return call(item)
    finally:
        if _check_parent():
            os._exit(1)


class LocalExecutor:
    def __init__(self, **options: Any):
        """Options: see :class:`LocalOptions` (validated here: a bad or unknown one fails)."""
        self.workers = LocalOptions(**options).workers or os.cpu_count() or 1

    def run(self, call: Callable[[Any], Any], items: Sequence[Any],
            folder: Path) -> Iterator[Any]:
        """Yield each point's result as it ends; ``folder`` is unused (the pool keeps no files)."""
        if not items:
            return
        pool = ProcessPoolExecutor(max_workers=min(self.workers, len(items)),
                                   mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_setup, initargs=(os.getpid(),))
        futures = [pool.submit(_run_item, call, item) for item in items]
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
