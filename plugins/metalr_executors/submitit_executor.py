"""The ``submitit`` executor: a sweep as one job array on SLURM, through submitit.

One array for the whole sweep, not a job per point: the scheduler sees one entry, and
``array_parallelism`` caps how many points run at once. Each array task runs
:func:`metalr.running.sweep.run_point` on a compute node, which must see the sweep's folder and the
tracking store (a shared filesystem, or an MLflow server); the jobs' scripts, pickles and logs
go into ``folder`` inside the sweep's folder, never the working directory.

The jobs are polled, and each point's record is yielded as its job ends, in any order. A job
that ends without a result (killed at its time limit or for memory, or broken before the point
started) costs that point only: it is yielded as :class:`metalr.contracts.protocols.ItemFailed`, one
line with the job's error and the path of its log, and the sweep writes the point FAILED.

Ctrl-C cancels the jobs not finished (SLURM sends SIGTERM to a running one, which the runner
takes as Ctrl-C: checkpoint, runs KILLED) and waits a few seconds for them. ``cluster: local``
runs the array as processes on this machine (every point at once: for trying a small sweep;
the ``local`` executor is the pool), ``cluster: debug`` one point after another in this process.

submitit is optional (the ``submitit`` extra): imported when the executor is built, so the
``local`` executor of this plugin works without it.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from metalr.contracts.protocols import ItemFailed

EXTRA = "the submitit executor needs the `submitit` extra: pip install 'metalr[submitit]'"
POLL_S = 1.0  # a done() is a file check (and, on SLURM, a cached sacct): cheap at this rate
CANCEL_WAIT_S = 10.0


class MissingExtraError(ImportError):
    """submitit, of the ``submitit`` extra, is not installed."""


class SubmititOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cluster: Literal["slurm", "local", "debug"] | None = Field(
        None, description="unset: SLURM where its commands are, else local; local: processes on "
        "this machine, all points at once (to try a sweep); debug: one by one in this process")
    folder: str = Field("submitit", min_length=1,
                        description="job scripts, pickles and logs; relative to the sweep's folder")
    partition: str | None = Field(None, description="SLURM partition; unset: the cluster's default")
    timeout_min: int = Field(240, ge=1, description="each point's time limit, in minutes")
    gpus_per_node: int = Field(0, ge=0, le=64, description="GPUs per point (set 1 for a "
                               "train.device cuda recipe); local hides the others too")
    cpus_per_task: int = Field(1, ge=1, le=1024,
                               description="CPUs per point; match train.threads to it")
    mem_gb: float | None = Field(None, gt=0, description="memory per point; unset: the "
                                 "cluster's default")
    array_parallelism: int = Field(256, ge=1, description="points running at once on SLURM")
    additional_parameters: dict[str, Any] = Field(
        default_factory=dict, description="more sbatch options, e.g. {account: proj, qos: high}")


def _submitit() -> ModuleType:
    try:
        import submitit
    except ModuleNotFoundError as exc:
        if exc.name != "submitit":
            raise  # submitit is there but broken: show its own error
        raise MissingExtraError(EXTRA) from None
    return submitit


class SubmititExecutor:
    def __init__(self, **options: Any):
        self.options = SubmititOptions(**options)
        self.submitit = _submitit()  # at build: a missing extra fails before any run starts
        if self.options.cluster == "slurm" and shutil.which("srun") is None:
            raise RuntimeError("cluster: slurm, but SLURM's `srun` is not on PATH here: run "
                               "the sweep on the cluster's login node, or try it here with "
                               "cluster: local")

    def run(self, call: Callable[[Any], Any], items: Sequence[Any],
            folder: Path) -> Iterator[Any]:
        """Submit the items as one job array; yield each result (or ItemFailed) as its job ends."""
        if not items:
            return
        o = self.options
        executor = self.submitit.AutoExecutor(folder=Path(folder) / o.folder, cluster=o.cluster)
        executor.update_parameters(
            name=Path(folder).name, timeout_min=o.timeout_min, cpus_per_task=o.cpus_per_task,
            # None: no --gpus-per-node=0 line, which a cluster without GPUs may reject
            gpus_per_node=o.gpus_per_node or None, mem_gb=o.mem_gb, slurm_partition=o.partition,
            slurm_array_parallelism=o.array_parallelism,
            slurm_additional_parameters=o.additional_parameters or None)
        try:
            jobs = executor.map_array(call, items)
        except Exception as exc:  # sbatch refused the array (a wrong partition, account...)
            raise RuntimeError(f"submitting {len(items)} points failed: "
                               f"{' '.join(str(exc).split())[:500]}") from exc
        pending = dict(enumerate(zip(jobs, items)))
        try:
            while pending:
                ready = [pending.pop(i) for i, (job, _) in list(pending.items()) if job.done()]
                for job, item in ready:
                    yield self._outcome(job, item)
                if pending and not ready:
                    time.sleep(POLL_S)
        except BaseException:  # Ctrl-C here, or the caller stopped early (GeneratorExit)
            self._cancel([job for job, _ in pending.values()])
            raise

    def _outcome(self, job: Any, item: Any) -> Any:
        try:
            return job.result()
        except Exception as exc:  # noqa: BLE001  (a lost job costs its point, not the sweep)
            return ItemFailed(item, self._one_line(job, exc))

    def _one_line(self, job: Any, exc: Exception) -> str:
        """The job's error in one line: the last line of its traceback, or its state (SLURM's
        TIMEOUT, OUT_OF_MEMORY ...) when it left no result; and where its log is."""
        text = str(exc)
        if isinstance(exc, self.submitit.core.utils.FailedJobError) and "-" * 22 in text:
            lines = [line.strip() for line in text.split("-" * 22)[1].splitlines()]
            what = next((line for line in reversed(lines) if line), type(exc).__name__)
        else:
            with contextlib.suppress(Exception):
                text = f"ended without a result (state {job.state})"
            what = " ".join(text.split())
        return f"job {job.job_id}: {what[:300]} (log: {job.paths.stderr})"

    @staticmethod
    def _cancel(jobs: list[Any]) -> None:
        for job in jobs:
            with contextlib.suppress(Exception):
                job.cancel(check=False)
        deadline = time.monotonic() + CANCEL_WAIT_S  # time for the runners to checkpoint
        while jobs and time.monotonic() < deadline:
            jobs = [job for job in jobs if not _ended(job)]
            if jobs:
                time.sleep(0.2)


def _ended(job: Any) -> bool:
    try:
        return bool(job.done())
    except Exception:  # noqa: BLE001  (a cancelled debug job raises: it is over)
        return True
