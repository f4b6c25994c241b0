"""Meta-learned nets on disk: loading a file never runs code from it.

metalr writes safetensors: the header carries the registered policy name and its options, which
is all that is needed to rebuild the net through the registry before its tensors are loaded. It
also reads the authors' released ``.pth`` files (plain tensor state_dicts, read with
``torch.load(weights_only=True)``; :mod:`metalr.official_nets`). The format is sniffed from the
first bytes, not the file name.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from metalr import official_nets
from metalr.plugins import Registry, get_registry
from metalr.protocols import EpisodicLearner

POLICY_KEY = "metalr.policy"
OPTIONS_KEY = "metalr.options"


class WeightsError(ValueError):
    """A file that is not a meta-learned net metalr can read (safetensors or a released .pth)."""


def is_safetensors(path: Path) -> bool:
    """Sniff: 8 bytes of little-endian header length, then the JSON header's ``{``."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return struct.unpack("<Q", head[:8])[0] < path.stat().st_size


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_meta_learner(
    path: str | Path, policy_name: str, policy: Any, extra: dict[str, str] | None = None,
) -> Path:
    """Write theta and, in the header, the policy name and the options that rebuild it.

    The options come from ``policy.options()``: for the loss-to-LR nets they leave gamma out,
    because the learned scale lives in the tensors (``log_gamma``, ``ref_lr``) and a header that
    repeated it could disagree with them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    options = policy.options() if callable(getattr(policy, "options", None)) else {}
    metadata = {POLICY_KEY: policy_name, OPTIONS_KEY: json.dumps(options), **(extra or {})}
    tmp = path.with_suffix(path.suffix + ".part")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)  # never leave a half-written net behind
    return path


def read_meta_learner(path: str | Path) -> tuple[str, dict[str, Any], dict[str, torch.Tensor], dict[str, str]]:
    """Return ``(policy name, options, tensors, metadata)`` of a saved net.

    A torch file (the authors' released nets) is checked key by key and converted to an
    ``mlrsnet`` with ``cell: official``; its metadata records the source and its sha256.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if not is_safetensors(path):
        try:
            name, options, tensors = official_nets.convert(official_nets.read_state_dict(path), path)
        except ValueError as exc:  # say first what the file is not: most are not the authors'
            detail = str(exc).removeprefix(f"{path}: ")
            raise WeightsError(f"{path}: not a safetensors file; read as one of the authors' "
                               f"MLR-SNet torch files: {detail}") from None
        metadata = {POLICY_KEY: name, OPTIONS_KEY: json.dumps(options),
                    official_nets.FORMAT_KEY: official_nets.FORMAT,
                    official_nets.SOURCE_KEY: path.name, official_nets.SHA256_KEY: sha256(path),
                    official_nets.REF_UNSET_KEY: "true"}
        return name, options, tensors, metadata
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types, which vary by version
        raise WeightsError(
            f"{path}: not a safetensors file ({exc}); metalr loads meta-learned nets only from "
            "safetensors, never from pickle"
        ) from None
    if POLICY_KEY not in metadata:
        raise WeightsError(f"{path}: safetensors header has no {POLICY_KEY!r}: not saved by metalr")
    try:
        options = json.loads(metadata.get(OPTIONS_KEY, "{}"))
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path}: header {OPTIONS_KEY!r} is not JSON ({exc})") from None
    if not isinstance(options, dict):
        raise WeightsError(f"{path}: header {OPTIONS_KEY!r} is not a JSON object")
    return metadata[POLICY_KEY], options, tensors, metadata


def is_loss_to_lr_net(policy: Any) -> bool:
    """A net from the loss to the LR with a scale (MLR-SNet, the MLP variant, a third party's)."""
    return (isinstance(policy, torch.nn.Module)
            and all(callable(getattr(policy, m, None)) for m in ("initial_state", "rescale",
                                                                   "set_gamma", "envelope"))
            and isinstance(getattr(policy, "gamma", None), torch.Tensor))


def load_meta_learner(
    path: str | Path, into: Any = None, *, policy_name: str | None = None,
    frozen: bool = False, registry: Registry | None = None,
) -> Any:
    """The one way a saved net is loaded.

    With ``into`` (a policy built from a recipe, for ``meta.weights``): the file must hold a net
    of ``policy_name`` of the same shape; its theta is loaded into ``into``, whose own options
    (a gamma the recipe set included) win. Without: the net is rebuilt from the file's header
    through the registry; it must be a loss-to-LR net or an episodic learner (the LR
    controller). A policy with ``check_saved_options(header options)`` refuses a file whose
    options it cannot use (the controller: other features or action map). ``frozen`` stops
    gradients (meta-test).
    """
    name, options, tensors, metadata = read_meta_learner(path)
    if into is None:
        try:
            into = (registry or get_registry()).get("lr_policy", name).build(**options)
        except Exception as exc:
            raise WeightsError(f"{path}: cannot rebuild policy {name!r} with the options in "
                               f"its header ({exc})") from None
        if not (is_loss_to_lr_net(into) or isinstance(into, EpisodicLearner)):
            raise WeightsError(f"{path}: policy {name!r} is not a loss-to-LR net (like "
                               "'mlrsnet') or an episodic learner (like 'lr-controller'): it "
                               "cannot be used as a learned schedule")
    elif policy_name is not None and name != policy_name:
        raise WeightsError(f"{path}: holds a {name!r} net, not {policy_name!r}")
    if callable(getattr(into, "check_saved_options", None)):  # header options that must agree
        try:
            into.check_saved_options(options)
        except ValueError as exc:
            raise WeightsError(f"{path}: {exc}") from None
    try:
        into.load_state_dict(tensors)
    except (RuntimeError, KeyError, ValueError) as exc:
        # torch's first line is only "Error(s) in loading state_dict for X:"; the reason follows
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        first = lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]
        raise WeightsError(f"{path}: its tensors do not fit this {name!r} net (different cell, "
                           f"hidden size or layers?): {first}") from None
    if (metadata.get(official_nets.REF_UNSET_KEY) == "true"
            and getattr(into, "gamma_source", None) != "option"):
        official_nets.set_reference_lr(into)  # the file has no ref_lr: where the net starts
    if frozen:
        if callable(getattr(into, "requires_grad_", None)):
            into.requires_grad_(False)
        into.frozen = True
    return into
