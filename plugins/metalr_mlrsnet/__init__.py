"""Meta-learned LR policies: MLR-SNet (an LSTM, paper Eq. 7), its memoryless MLP variant, and
their control with nothing learned (probed-wsd); and the authors' released nets as a net format."""

from metalr import hookimpl

from .base import ProbedOptions
from .control import ProbedWSD
from .es import ESOptions, MLRSNetES
from .lstm import MLRSNet, MLRSNetOptions
from .mlp import MLPNet, MLPNetOptions
from .official import OfficialFormat
from .transfer import MLRSNetTransfer, TransferOptions


@hookimpl
def register_lr_policies(register):
    register("mlrsnet", MLRSNet, options=MLRSNetOptions,
             summary="MLR-SNet: LSTM from loss to LR (Eq. 7)")
    register("mlp-lr", MLPNet, options=MLPNetOptions, summary="MLP from loss to LR, no memory")
    register("probed-wsd", ProbedWSD, options=ProbedOptions,
             summary="the control: MLR-SNet's schedule with nothing learned (probed start "
                     "held, brake, recheck, cool-down)")
    register("mlrsnet-es", MLRSNetES, options=ESOptions,
             summary="MLR-SNet meta-trained by evolution strategies on the end-of-run meta "
                     "loss of whole runs (offline, antithetic pairs)")
    register("mlrsnet-transfer", MLRSNetTransfer, options=TransferOptions,
             summary="frozen MLR-SNets over k equal phases (meta-test, App. C)")


@hookimpl
def register_net_formats(register):
    register("mlrsnet-official", OfficialFormat,
             summary="the authors' released MLR-SNet .pth files (xjtushujun/MLR-SNet), read as "
                     "mlrsnet nets with cell: official")
