"""The LR Controller of Xu et al. (2019): an RL-trained meta-learner (paper Appendix G)."""

try:
    import gymnasium  # noqa: F401
    import stable_baselines3  # noqa: F401
except ImportError as exc:  # reported by `metalr plugins` under BROKEN, with the fix
    raise ImportError(f"lr-controller needs the rl extra: pip install 'metalr[rl]' ({exc})") from exc

from metalr import hookimpl

from .policy import ControllerOptions, LRController


@hookimpl
def register_lr_policies(register):
    register("lr-controller", LRController, options=ControllerOptions,
             summary="RL LR Controller (Xu et al. 2019): PPO rescales the LR every K steps")
