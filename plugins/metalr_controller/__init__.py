"""The LR Controller of Xu et al. (2019): an RL-trained meta-learner (paper Appendix G)."""

from metalr import hookimpl

from .policy import ControllerOptions, LRController


@hookimpl
def register_lr_policies(register):
    register("lr-controller", LRController, options=ControllerOptions,
             summary="RL LR Controller (Xu et al. 2019): PPO rescales the LR every K steps")
