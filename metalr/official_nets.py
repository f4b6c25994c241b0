"""The authors' released MLR-SNet files (xjtushujun/MLR-SNet, ``meta-test/mlr_snet *.pth``).

They are ``torch.save`` state_dicts of the authors' meta-test net: plain tensors, read here
with ``torch.load(weights_only=True, map_location="cpu")`` (their storages are tagged
``cuda:0``; ``weights_only`` refuses any pickle that would build objects or run code). Their
keys map onto metalr's ``mlrsnet`` policy with ``cell: official``; the map and the checks live
here so :func:`metalr.weights.load_meta_learner` stays the one loader of saved nets.

What the files do not hold, and metalr sets:

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
from pathlib import Path
from typing import Any

import torch

POLICY = "mlrsnet"
PAPER_GAMMA = 1.0  # images (paper Sec. 4, footnote 1)
SOURCE_CLASSES = 10  # CIFAR-10: ref_lr is the LR at the untrained loss ln(10)
FORMAT_KEY = "metalr.source_format"
FORMAT = "torch-state-dict (authors' MLR-SNet layout)"
SOURCE_KEY, SHA256_KEY = "metalr.source", "metalr.source_sha256"
REF_UNSET_KEY = "metalr.ref_lr_unset"  # read straight from a .pth: ref_lr still to be set
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
    expected. Dtypes, NaNs and sizes are checked before, by :func:`metalr.weights.check_tensors`,
    the one check of both formats. ``ref_lr`` is left to :func:`set_reference_lr`, which needs
    the built net.
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


def _target_name(source: Path) -> str:
    """``mlr_snet 100.pth`` -> ``theta-epoch0100.safetensors`` (the epoch the authors saved it)."""
    epoch = re.search(r"(\d+)$", source.stem)
    if epoch is None:
        return f"{source.stem}.safetensors"
    return f"theta-epoch{int(epoch.group(1)):04d}.safetensors"


def import_nets(files: list[str | Path], out: str | Path, gamma: float = PAPER_GAMMA) -> list[Path]:
    """Convert released ``.pth`` files into safetensors in ``out``, with a ``card.md``.

    Each output's header and the card record the source file and its sha256, so a converted
    net can be traced to the exact file it came from. ``out`` must hold no nets yet (a stale
    net would become an extra phase). The folder then works wherever a net is named.
    """
    from metalr.weights import WeightsError, load_meta_learner, save_meta_learner, sha256

    if not (math.isfinite(gamma) and gamma > 0):  # a NaN or inf gamma would be saved as theta
        raise WeightsError(f"--gamma must be a finite number > 0 (the LR bound), got {gamma}")
    out = Path(out)
    if out.is_dir() and any(out.glob("*.safetensors")):
        raise WeightsError(f"{out}: already holds nets; choose an empty or new folder")
    sources = [Path(f) for f in files]
    targets = [out / _target_name(src) for src in sources]
    if len(set(targets)) != len(targets):
        raise WeightsError(f"two sources map to the same output name: {[t.name for t in targets]}")
    nets = []
    for src in sources:  # check every file before writing anything
        net = load_meta_learner(src, frozen=True)
        if gamma != PAPER_GAMMA:
            net.set_gamma(gamma)
            set_reference_lr(net)
        nets.append(net)
    rows = []
    for src, target, net in zip(sources, targets, nets):
        digest = sha256(src)
        save_meta_learner(target, POLICY, net, extra={
            FORMAT_KEY: FORMAT, SOURCE_KEY: src.name, SHA256_KEY: digest})
        rows.append(f"| {target.name} | {src.name} | `{digest}` | {float(net.ref_lr):.6g} |")
    card = [
        "# MLR-SNet nets released by the paper's authors",
        "",
        ("Meta-trained by Shu et al. on CIFAR-10 with ResNet-18 (xjtushujun/MLR-SNet, "
         "`meta-test/`), converted by `metalr nets import` to safetensors. No licence is "
         "stated by their repository: do not redistribute without asking the authors."),
        "",
        (f"- policy `mlrsnet`, `cell: official`, hidden {nets[0].hidden}, width "
         f"{nets[0].width}, `preset: paper` (no cool-down)"),
        (f"- gamma {gamma:g} (the paper's for images; the reference code derives ~0.67 for "
         "CIFAR-10); ref_lr: each net's first LR from a zero state at loss ln(10)"),
        "- phases: the files in name order (meta-training epochs)",
        "",
        "| file | source | source sha256 | ref_lr |",
        "| --- | --- | --- | --- |",
        *rows,
        "",
    ]
    (out / "card.md").write_text("\n".join(card))
    return targets
