"""The plug-and-play scheduler: a frozen meta-learned net as an LR scheduler for anyone's PyTorch
loop (:mod:`~metalr.scheduler.learned`); its framework adapters are :mod:`metalr.integrations`.
"""

from metalr.scheduler.learned import LearnedLR, PhasedNets, ceiling_epochs, pick_nets, shipped_nets

__all__ = ["LearnedLR", "PhasedNets", "ceiling_epochs", "pick_nets", "shipped_nets"]
