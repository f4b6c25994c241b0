"""The authors' released MLR-SNet files (xjtushujun/MLR-SNet, ``meta-test/mlr_snet *.pth``).

They are ``torch.save`` state_dicts of the authors' meta-test net: plain tensors, read here
with ``torch.load(weights_only=True, map_location="cpu")`` (their storages are tagged
``cuda:0``; ``weights_only`` refuses any pickle that would build objects or run code). Their
keys map onto the ``mlrsnet`` policy with ``cell: official``. The core reaches this module only
as the ``mlrsnet-official`` net format (:class:`metalr.contracts.protocols.NetFormat`), so that
:func:`metalr.engine.weights.load_meta_learner` stays the one loader of saved nets without knowing
this plugin's parameter paths.

What the files do not hold, and the format sets:

- **gamma**: the paper's value for images, 1 (Sec. 4, footnote 1; the reference code instead
  derives ~0.67 for CIFAR-10 from the initial loss). ``metalr nets import --gamma`` changes it.
- **ref_lr** (the LR a schedule starts from, which ``scale: auto`` and ``LearnedLR(lr=...)``
  rescale to): the net's first LR from a zero state for a loss of ln(10), the untrained loss of
  the CIFAR-10 runs the nets were meta-trained on.
- **preset: paper**: no cool-down, as in the authors' meta-test.
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from metalr.contracts.protocols import ImportedNet

POLICY = "mlrsnet"
PAPER_GAMMA = 1.0  # images (paper Sec. 4, footnote 1)
SOURCE_CLASSES = 10  # CIFAR-10: ref_lr is the LR at the untrained loss ln(10)
_MAPS = ("fc_i2h", "fc_h2h")
_LAYOUT_HINT = ("expected the authors' MLR-SNet layout: layer1.fc_i2h.{0,2}.{weight,bias}, "
                "layer1.fc_h2h.{0,2}.{weight,bias}, layer3.{weight,bias}")


def expected_shapes(hidden: int, width: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a released file with LSTM size ``hidden`` and pre-layer ``width``."""
    shapes = {"layer3.weight": (1, hidden), "layer3.bias": (1,)}
    for name, inputs in zip(_MAPS, (1, hidden)):
        shapes |= {f"layer1.{name}.0.weight": (width, inputs), f"layer1.{name}.0.bias": (width,),
                   f"layer1.{name}.2.weight": (4 * hidden, width),
                   f"layer1.{name}.2.bias": (4 * hidden,)}
    return shapes


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors, never running code from it; ``ValueError`` names the file and why."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it then refuses
            warnings.simplefilter("ignore")
            state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        if "allowed global" not in str(exc):  # no code in it: not a torch file of tensors
            detail = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
            raise ValueError(
                f"{path}: not a safetensors file, nor a torch file of tensors ({detail[:80]}): "
                "nets load from safetensors or plain tensors, never from pickle that can run "
                "code") from None
        # torch's own message suggests weights_only=False, which would run the file: not repeated
        raise ValueError(
            f"{path}: not a safetensors file, and torch.load(weights_only=True) refuses it "
            "(objects or code, not only tensors): nets load from safetensors or plain tensors, "
            "never from pickle that can run code"
        ) from None
    except Exception as exc:  # not a torch file at all: a bad magic number, a truncated zip
        raise ValueError(
            f"{path}: not a safetensors file, nor a torch file of tensors "
            f"({type(exc).__name__}): nets load from safetensors or plain tensors, never from "
            "pickle that can run code"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state_dict of tensors; "
                         + _LAYOUT_HINT)
    return {str(k): v for k, v in state.items()}


def convert(state: dict[str, torch.Tensor], path: Path,
            gamma: float = PAPER_GAMMA) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """``(policy name, options, tensors)`` of an ``mlrsnet`` (official cell) for a released file.

    Checks every key and shape first; ``ValueError`` names the file, the key and what was
    expected. Dtypes, NaNs and sizes are checked before, by
    :func:`metalr.engine.weights.check_tensors`, the one check of every format. ``ref_lr`` is left
    to :func:`set_reference_lr`, which needs the built net.
    """
    if "layer3.weight" not in state or "layer1.fc_i2h.0.weight" not in state:
        raise ValueError(f"{path}: keys {sorted(state)[:6]}... are not an MLR-SNet's; "
                         + _LAYOUT_HINT)
    hidden = state["layer3.weight"].shape[-1]
    width = state["layer1.fc_i2h.0.weight"].shape[0]
    want = expected_shapes(hidden, width)
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or extra:
        raise ValueError(f"{path}: missing keys {missing}, unexpected keys {extra}; "
                         + _LAYOUT_HINT)
    for key, shape in want.items():
        if tuple(state[key].shape) != shape:
            raise ValueError(f"{path}: {key} has shape {tuple(state[key].shape)}, expected "
                             f"{shape} (hidden {hidden}, width {width} from layer3.weight and "
                             "layer1.fc_i2h.0.weight)")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    tensors = {key.replace("layer1.", "cells.0.", 1).replace("layer3.", "out.", 1):
               value.detach().to(torch.float32).contiguous() for key, value in state.items()}
    tensors["log_gamma"] = torch.tensor(math.log(gamma))
    tensors["ref_lr"] = torch.tensor(gamma / 2)  # replaced by set_reference_lr once built
    options = {"hidden": hidden, "layers": 1, "cell": "official", "width": width,
               "preset": "paper"}
    return POLICY, options, tensors


def set_reference_lr(net: Any, classes: int = SOURCE_CLASSES) -> float:
    """Set ``net.ref_lr`` to its first LR (zero state, loss ln(classes)), where it starts."""
    with torch.no_grad():
        device = net.ref_lr.device
        lr, _ = net(torch.tensor(math.log(classes), device=device), net.initial_state(device))
        net.ref_lr.fill_(float(lr))
    return float(lr)


def target_name(source: Path) -> str:
    """``mlr_snet 100.pth`` -> ``theta-epoch0100.safetensors`` (the epoch the authors saved it)."""
    epoch = re.search(r"(\d+)$", source.stem)
    if epoch is None:
        return f"{source.stem}.safetensors"
    return f"theta-epoch{int(epoch.group(1)):04d}.safetensors"


def card(imported: Sequence[ImportedNet], gamma: float | None) -> str:
    """The ``card.md`` of a folder of converted nets: where they came from, what metalr set."""
    gamma = PAPER_GAMMA if gamma is None else gamma
    first = imported[0].net
    rows = [f"| {i.target.name} | {i.source.name} | `{i.sha256}` | {float(i.net.ref_lr):.6g} |"
            for i in imported]
    lines = [
        "# MLR-SNet nets released by the paper's authors",
        "",
        ("Meta-trained by Shu et al. on CIFAR-10 with ResNet-18 (xjtushujun/MLR-SNet, "
         "`meta-test/`), converted by `metalr nets import` to safetensors. No licence is "
         "stated by their repository: do not redistribute without asking the authors."),
        "",
        (f"- policy `mlrsnet`, `cell: official`, hidden {first.hidden}, width "
         f"{first.width}, `preset: paper` (no cool-down)"),
        (f"- gamma {gamma:g} (the paper's for images; the reference code derives ~0.67 for "
         "CIFAR-10); ref_lr: each net's first LR from a zero state at loss ln(10)"),
        "- phases: the files in name order (meta-training epochs)",
        "",
        "| file | source | source sha256 | ref_lr |",
        "| --- | --- | --- | --- |",
        *rows,
        "",
    ]
    return "\n".join(lines)


class OfficialFormat:
    """The ``mlrsnet-official`` net format: the authors' files as ``mlrsnet`` nets."""

    label = "torch-state-dict (authors' MLR-SNet layout)"
    description = "one of the authors' MLR-SNet torch files"

    def read(self, path: Path) -> dict[str, torch.Tensor]:
        return read_state_dict(path)

    def convert(self, tensors: dict[str, torch.Tensor],
                path: Path) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
        return convert(tensors, path)

    def complete(self, net: Any) -> None:
        """Set ``ref_lr``, which the files lack, unless a recipe's gamma fixed the scale."""
        if getattr(net, "gamma_source", None) != "option":
            set_reference_lr(net)

    def target_name(self, source: Path) -> str:
        return target_name(source)

    def card(self, imported: Sequence[ImportedNet], gamma: float | None) -> str:
        return card(imported, gamma)
