"""Training: Algorithm 1 (:mod:`~metalr.engine.algorithm`: the real step, the meta-update through
a differentiable virtual step, the meta-objectives), the LR probe, episodes for learners that
train over whole runs, the data order, stopping rules, devices and torch.distributed, the state
a run saves and resumes from, and the one loader of saved nets. Knows the contracts and nothing
above them: no recipe, tracker or report.
"""
