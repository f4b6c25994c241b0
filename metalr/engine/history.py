"""What one training run produced (:class:`History`): the engine writes it, recovery reads it,
and the runner, the report and the figures read it from ``history.json``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from metalr.engine.probe import ProbeResult


@dataclass
class History:
    """What one training run produced, step by step and epoch by epoch."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    epochs: list[dict[str, float]] = field(default_factory=list)
    wall_time: float = 0.0
    probe: ProbeResult | None = None  # the LR probe, when the policy asked for one
    t_val: int | None = None  # steps between meta-updates, when meta-training
    recheck: ProbeResult | None = None  # the check of the LR part-way in (Rechecked policies)
    recheck_step: int | None = None  # the step it ran before
    restarts: list[int] = field(default_factory=list)  # steps after which the run restarted
    # from its first weights (a dead net: the death watch's, or the recheck's)
    blown: list[int] = field(default_factory=list)  # those of them after a blow-up
    rollbacks: list[int] = field(default_factory=list)  # steps after which a run that blew up
    # went back to its last good epoch's state (its first weights let go: Recovery.roll_back)

    def killing_lr(self) -> float:
        """The lowest LR at which the run's net died or the recheck found it killed (inf:
        none); a restart goes below it and no later move goes back up to it."""
        return min((self.lrs[s - 1] for s in self.restarts if s > 0), default=math.inf)

    def since_restart(self) -> list[float]:
        """The training losses since the run last restarted from its first weights."""
        return self.losses[self.restarts[-1] if self.restarts else 0:]

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (a checkpoint or a JSON file holds them exactly)."""
        return {"lrs": list(self.lrs), "losses": list(self.losses),
                "epochs": [dict(e) for e in self.epochs], "wall_time": self.wall_time,
                "probe": None if self.probe is None else dataclasses.asdict(self.probe),
                "t_val": self.t_val,
                "recheck": None if self.recheck is None else dataclasses.asdict(self.recheck),
                "recheck_step": self.recheck_step, "restarts": list(self.restarts),
                "blown": list(self.blown), "rollbacks": list(self.rollbacks)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> History:
        def probed(value: Mapping[str, Any] | None) -> ProbeResult | None:
            if value is None:
                return None
            return ProbeResult(**{**value, "losses": {float(k): v
                                                       for k, v in value["losses"].items()}})
        return cls(lrs=list(data["lrs"]), losses=list(data["losses"]),
                   epochs=[dict(e) for e in data["epochs"]], wall_time=data["wall_time"],
                   probe=probed(data.get("probe")), t_val=data.get("t_val"),
                   recheck=probed(data.get("recheck")), recheck_step=data.get("recheck_step"),
                   restarts=list(data.get("restarts", [])), blown=list(data.get("blown", [])),
                   rollbacks=list(data.get("rollbacks", [])))
