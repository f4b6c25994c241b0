"""The plainest policy: one LR for the whole run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from metalr.contracts.protocols import RunInfo, StepContext
from metalr.engine.run_state import SavedAttributes


class FixedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: float = Field(0.1, gt=0, description="the learning rate of every step")


class FixedLR(SavedAttributes):
    """The same LR at every step; options: see :class:`FixedOptions` (``FixedLR(lr=0.1)``)."""

    run_state_attributes = ()  # one LR, the recipe's: nothing to resume

    def __init__(self, **options: Any):
        self._lr = float(FixedOptions(**options).lr)

    def start(self, run: RunInfo) -> None:
        pass

    def lr(self, ctx: StepContext) -> float:
        return self._lr

    def end_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        pass
