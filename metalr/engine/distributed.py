"""Several processes, one run: what torchrun's ranks share, and how (torch.distributed only).

Under ``torchrun --nproc_per_node N -m metalr run RECIPE`` every rank runs the same recipe with
the same seeds, so it draws the same *global* batches, builds the same initial weights and the
same policy. Each rank trains on its contiguous slice of every global batch and meta batch
(:func:`shard`); DDP averages g_t in backward (its own bucketed reducer); everything else stays
identical on every rank by construction, because only two scalars cross ranks besides g_t:

- the training loss ``L_t``, once a step, so every rank's policy reads the global batch's loss
  and gives the same LR;
- ``dL_meta / d lr``, once a meta-update: the LR is a scalar, so the hypergradient factors as
  ``dL_meta/dlr * dlr/dtheta`` and the ranks need to agree on one number only.

One process (no torchrun, or one rank) is the same code with every helper here the identity.
docs/distributed.md has the whole picture.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

TIMEOUT = datetime.timedelta(minutes=10)
"""How long a rank waits in a collective for the others: a rank that died (or raised alone) is
reported within this time, instead of torch's default 30 minutes."""


@dataclass(frozen=True)
class Group:
    """This process's place among the ranks of one run (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """Several ranks share the run: batches are sharded, scalars averaged, DDP wraps."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """The rank that tracks, prints and writes the output folder."""
        return self.rank == 0


def launched(env: Mapping[str, str] | None = None) -> Group:
    """The group torchrun started this process in (its environment), before any process group."""
    env = os.environ if env is None else env
    return Group(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)),
                 int(env.get("LOCAL_RANK", 0)))


def current() -> Group:
    """The group of the initialised process group; one rank when there is none."""
    if dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size(), launched().local_rank)
    return Group()


def local_device(device: torch.device) -> torch.device:
    """``cuda`` becomes this rank's GPU (``cuda:LOCAL_RANK``) under torchrun; others unchanged."""
    device = torch.device(device)
    group = launched()
    if group.active and device.type == "cuda":
        return torch.device("cuda", group.local_rank)
    return device


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[Group]:
    """The process group of a torchrun launch (gloo on CPU, NCCL on CUDA), destroyed on exit.

    Without torchrun, or when a caller already initialised one (kept, not destroyed), this only
    reports the group.
    """
    if not launched().active or (dist.is_available() and dist.is_initialized()):
        yield current()
        return
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    try:
        yield current()
        # Every rank finishes its last collective before any tears the group down: a rank
        # destroying it while another is still inside one can abort that one (seen with gloo).
        # Not on an exception: a rank that died would leave the others waiting for TIMEOUT.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of a (small) tensor, without a graph; the value itself on one rank.

    Goes through ``torch.distributed.all_reduce`` (looked up at call time: tests count it).
    Sum then divide, because gloo has no AVG.
    """
    group = current()
    if not group.active:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / group.size


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. the output folder rank 0 created)."""
    if not current().active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP over the base model when several ranks share the run, else the model itself.

    Only the base model: the policy is replicated and fed identical inputs instead, which costs
    nothing to keep in sync. DDP's backward averages g_t over ranks.
    """
    if not current().active:
        return model
    device = torch.device(device)
    ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def batch_size(batch: Any) -> int | None:
    """The number of samples (dim 0) of a batch of tensors; None if it is not one."""
    if isinstance(batch, torch.Tensor):
        return len(batch) if batch.dim() else None
    if isinstance(batch, (tuple, list)):
        sizes = {batch_size(b) for b in batch if isinstance(b, (torch.Tensor, tuple, list))}
        return sizes.pop() if len(sizes) == 1 else None
    return None


def _slice(batch: Any, start: int, stop: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[start:stop]
    if isinstance(batch, (tuple, list)):
        return type(batch)(_slice(b, start, stop) for b in batch)
    return batch


def shard(batch: Any, group: Group | None = None) -> tuple[Any, float]:
    """This rank's contiguous slice of a global batch, and the weight of its mean loss.

    Rank r gets samples ``[n*r//N, n*(r+1)//N)``. The weight ``n_r * N / n`` makes the average
    over ranks of ``weight * mean loss over the slice`` the mean loss over the whole batch, even
    when n is not a multiple of N, so N ranks compute what one process does on the whole batch
    (DDP averages gradients, :func:`all_reduce_mean` averages scalars). On one rank: the batch
    itself and weight 1.

    Batches must be tensors, or tuples / lists of tensors, with samples on dim 0; anything else
    (e.g. the language-model task's windows, which carry an LSTM state) is refused.
    """
    group = current() if group is None else group
    if not group.active:
        return batch, 1.0
    n = batch_size(batch)
    if n is None:
        raise ValueError(f"a batch of type {type(batch).__name__} cannot be split across "
                         f"{group.size} ranks (batches must be tensors with samples on dim 0); "
                         "run this recipe in one process, without torchrun")
    if n < group.size:
        raise ValueError(f"a batch of {n} samples cannot be split across {group.size} ranks; "
                         f"use a batch size of at least {group.size}")
    start, stop = n * group.rank // group.size, n * (group.rank + 1) // group.size
    return _slice(batch, start, stop), (stop - start) * group.size / n
