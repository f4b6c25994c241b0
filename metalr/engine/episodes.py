"""Meta-training of a meta-learner that trains itself over whole runs (an :class:`EpisodicLearner`).

The runner hands such a learner here instead of to the engine's hypergradient: the learner runs
its own trainer (PPO for the LR controller) over ``policy.episodes`` fresh training runs, each
built by the runner (same task split, a new seed per episode). This module owns what the runner
would otherwise own for them: a progress bar, one tracker run for the meta-training with one
child run per episode (its reward, LR trace and final metrics), and nothing else; the runner
saves the learner and then runs it frozen like any other policy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from tqdm.auto import tqdm

from metalr.contracts.protocols import EpisodicLearner, Tracker

OpenRun = Callable[[str, Mapping[str, Any], str | None], str]
"""``open_run(name, params, parent) -> run id`` (the runner's, with its tags)."""


def train_episodes(policy: EpisodicLearner, make_engine: Callable[..., Any], *,
                   tracker: Tracker | None = None, open_run: OpenRun | None = None,
                   parent: str | None = None, label: str = "meta-train",
                   progress: bool = True) -> list[dict[str, Any]]:
    """Run the learner's own meta-training; return one record per episode."""
    records: list[dict[str, Any]] = []
    meta_run = None
    if tracker is not None and open_run is not None:
        meta_run = open_run(f"{label}/episodes", {"episodes": policy.episodes}, parent)
    bar = tqdm(total=policy.episodes, desc=f"{label} episodes", unit="episode",
               disable=not progress, dynamic_ncols=True, leave=False)

    def on_episode(index: int, record: Mapping[str, Any]) -> None:
        records.append(dict(record, episode=index))
        bar.update(1)
        bar.set_postfix(reward=f"{record['reward']:.3f}")
        if meta_run is None:
            return
        child = open_run(f"{label}/episode{index:03d}", {"episode": index}, meta_run)
        status = "FINISHED" if not record.get("diverged") else "FAILED"
        lrs = record["lrs"]
        for step, lr in enumerate(lrs):  # where the LR changes: the trace, at a tenth of the calls
            if step == 0 or lr != lrs[step - 1] or step == len(lrs) - 1:
                tracker.log_metrics(child, {"step_lr": lr}, step)
        for step, reward in enumerate(record["rewards"]):
            tracker.log_metrics(child, {"reward": reward}, step)
        final = {k: v for k, v in record["metrics"].items()
                 if isinstance(v, (int, float)) and math.isfinite(v)}
        tracker.log_metrics(child, {"episode_reward": record["reward"], **final}, 0)
        tracker.end_run(child, status)
        tracker.log_metrics(meta_run, {"episode_reward": record["reward"]}, index)

    status = "FAILED"
    try:
        policy.train_episodes(make_engine, on_episode)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        bar.close()
        if meta_run is not None:
            tracker.end_run(meta_run, status)
    return records
