"""Meta-learned nets on disk: loading a file never runs code from it.

metalr writes safetensors: the header carries the registered policy name and its options, which
is all that is needed to rebuild the net through the registry before its tensors are loaded. A
file that is not safetensors (sniffed from its first bytes, not its name) is read by a registered
net format (:class:`metalr.contracts.protocols.NetFormat`; the mlrsnet plugin's reads the authors'
released ``.pth`` files with ``torch.load(weights_only=True)``), found through the registry, so this
module knows no format's layout and imports no plugin.

A net is a few thousand numbers, so a file is bounded before anything is allocated for it: its
byte size, its header's length and JSON nesting, the sizes its options declare and the
parameters the net they describe would have (built on torch's ``meta`` device first); its tensors
must be finite floats. A hostile or damaged file is refused in one line naming the file and the
key, never by a RecursionError or a failed 160 GB allocation.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from metalr.contracts.protocols import EpisodicLearner, LossToLRNet, NetFormat
from metalr.contracts.registry import Registry, get_registry

POLICY_KEY = "metalr.policy"
OPTIONS_KEY = "metalr.options"
FORMAT_KEY = "metalr.source_format"
"""A converted net's header: the label of the net format it was converted from."""
SOURCE_KEY, SHA256_KEY = "metalr.source", "metalr.source_sha256"
"""A converted net's header: the name of the file it was converted from, and its sha256."""
CONVERTED_BY_KEY = "metalr.net_format"
"""Only in what :func:`read_meta_learner` returns for a foreign file, never saved: the registered
net format that read it, which completes the net once it is built."""

MAX_PARAMETERS = 10_000_000
"""Values in a net's tensors, all together (the shipped nets: ~8,500; the authors': ~12,000)."""
MAX_HEADER_BYTES = 1 << 20
"""A safetensors header: tensor names, shapes and a few options (safetensors allows 100 MB)."""
MAX_FILE_BYTES = 8 * MAX_PARAMETERS + MAX_HEADER_BYTES + (1 << 20)
"""MAX_PARAMETERS float64 values, the largest header and a torch file's pickle framing."""
MAX_JSON_DEPTH = 16
"""Nesting of the options in a header: they are flat (a list of sizes at most)."""
SIZE_OPTIONS = {"hidden": 1024, "width": 1024, "layers": 16, "net_arch": 1024}
"""Header options that set tensor shapes, and their bounds (nets in use: hidden 40-50, width 25,
1-2 layers, controller [32, 32]). A list (``net_arch``) may hold up to ``layers``' bound."""
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class WeightsError(ValueError):
    """A file that is not a meta-learned net metalr can read (safetensors or a net format's)."""


def is_safetensors(path: Path) -> bool:
    """Sniff: 8 bytes of little-endian header length, then the JSON header's ``{``."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return struct.unpack("<Q", head[:8])[0] < path.stat().st_size


def json_depth(text: str) -> int:
    """How deeply ``text``'s arrays and objects nest, without parsing it (json recurses)."""
    depth = deepest = 0
    for bracket in re.findall(r"[\[\]{}]", re.sub(r'"(?:[^"\\]|\\.)*"', "", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def check_file_size(path: Path) -> None:
    """Refuse a file too large to be a net before reading it (either format)."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise WeightsError(f"{path}: {size:,} bytes, over the {MAX_FILE_BYTES:,} a meta-learned "
                           f"net can take ({MAX_PARAMETERS:,} float64 values): not a net metalr "
                           "can load; give the file of the net itself")


def check_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse tensors no net can run with: not a float, NaN or inf, or too many values.

    The one check of a saved net's tensors, for safetensors and every net format alike, run
    when the file is read (so ``validate`` runs it too): an integer net loses its fractions (a
    ``ref_lr`` of 0.05 becomes 0, which the run then divides by), a NaN net gives NaN LRs.
    """
    total = 0
    for key, value in tensors.items():
        if value.layout != torch.strided or value.device.type != "cpu":  # sparse, meta: no data
            kind = (f"on the {value.device.type} device" if value.device.type != "cpu" else
                    f"a {str(value.layout).removeprefix('torch.')} tensor")
            raise WeightsError(f"{path}: tensor {key!r} is {kind}, not a dense tensor with its "
                               "values in the file: save the net's own state_dict")
        if value.dtype not in FLOAT_DTYPES:
            dtype = str(value.dtype).removeprefix("torch.")
            raise WeightsError(f"{path}: tensor {key!r} is {dtype}, not a float (float16, "
                               "bfloat16, float32 or float64): a net's weights are floats; save "
                               "it from the float net")
        total += value.numel()
        if total > MAX_PARAMETERS:
            raise WeightsError(f"{path}: its tensors hold more than {MAX_PARAMETERS:,} values "
                               f"(at {key!r}), the limit for a meta-learned net")
        bad = value.numel() - int(torch.isfinite(value).sum())
        if bad:
            raise WeightsError(f"{path}: tensor {key!r} holds {bad} NaN or inf of "
                               f"{value.numel()} values: a diverged or damaged net; use one "
                               "saved before it diverged")


def check_size_options(path: str | Path, options: dict[str, Any]) -> None:
    """Refuse header options that would build an oversized net, before building it."""
    for key, limit in SIZE_OPTIONS.items():
        value = options.get(key)
        values = value if isinstance(value, list) else [value]
        if len(values) > SIZE_OPTIONS["layers"]:
            raise WeightsError(f"{path}: header {OPTIONS_KEY!r} sets {key} to {len(values)} "
                               f"sizes, over the limit {SIZE_OPTIONS['layers']} for a "
                               "meta-learned net: a damaged or foreign file; re-save the net")
        for v in values:
            try:
                number = float(v)
            except (TypeError, ValueError, OverflowError):
                continue  # not a size: the policy's options schema refuses it by name
            if number > limit:
                raise WeightsError(f"{path}: header {OPTIONS_KEY!r} sets {key} = {v}, over the "
                                   f"limit {limit} for a meta-learned net: a damaged or foreign "
                                   "file; re-save the net")


def _count_on_meta(build: Any) -> int | None:
    """Values in the state of the net ``build()`` makes, built on torch's meta device (no
    memory, the RNG left as it was); ``None`` where the factory cannot build there."""
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            state = build().state_dict()
        return sum(v.numel() for v in state.values() if isinstance(v, torch.Tensor))
    except Exception:  # e.g. a factory that copies data (the lr-controller): bounded by options
        return None


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


def net_formats(registry: Registry | None = None) -> dict[str, NetFormat]:
    """The registered net formats by name: what reads a file that is not safetensors."""
    registry = registry or get_registry()
    return {name: registry.get("net_format", name).build()
            for name in registry.names("net_format")}


def _read_foreign(
    path: Path, registry: Registry | None,
) -> tuple[str, dict[str, Any], dict[str, torch.Tensor], dict[str, str]]:
    """A file that is not safetensors, read by the first net format that takes it."""
    formats = net_formats(registry)
    if not formats:
        raise WeightsError(f"{path}: not a safetensors file, and no net format is registered "
                           "to read another kind (`metalr plugins` lists them, and any plugin "
                           "that failed to load): metalr loads nets from safetensors")
    refusals = []
    for format_name, fmt in formats.items():
        try:
            state = fmt.read(path)
            check_tensors(path, state)
            name, options, tensors = fmt.convert(state, path)
        except ValueError as exc:  # say first what the file is not, then why each format refused
            refusals.append(f"read as {fmt.description}: {str(exc).removeprefix(f'{path}: ')}")
            continue
        metadata = {POLICY_KEY: name, OPTIONS_KEY: json.dumps(options), FORMAT_KEY: fmt.label,
                    SOURCE_KEY: path.name, SHA256_KEY: sha256(path),
                    CONVERTED_BY_KEY: format_name}
        return name, options, tensors, metadata
    if len(refusals) == 1:
        raise WeightsError(f"{path}: not a safetensors file; {refusals[0]}")
    raise WeightsError(f"{path}: not a safetensors file, nor of a net format metalr knows; "
                       + "; ".join(refusals))


def read_meta_learner(
    path: str | Path, registry: Registry | None = None,
) -> tuple[str, dict[str, Any], dict[str, torch.Tensor], dict[str, str]]:
    """Return ``(policy name, options, tensors, metadata)`` of a saved net.

    A file that is not safetensors is converted by the registered net format that reads it (the
    authors' released nets: checked key by key, an ``mlrsnet`` with ``cell: official``); its
    metadata records the format, the source and its sha256.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    check_file_size(path)
    if not is_safetensors(path):
        return _read_foreign(path, registry)
    with open(path, "rb") as f:
        header_bytes = struct.unpack("<Q", f.read(8))[0]
    if header_bytes > MAX_HEADER_BYTES:
        raise WeightsError(f"{path}: safetensors header of {header_bytes:,} bytes, over the "
                           f"limit {MAX_HEADER_BYTES:,} for a net's names, shapes and options: "
                           "not a net saved by metalr")
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
    depth = json_depth(metadata.get(OPTIONS_KEY, "{}"))
    if depth > MAX_JSON_DEPTH:
        raise WeightsError(f"{path}: header {OPTIONS_KEY!r} nests JSON {depth} deep, over the "
                           f"limit {MAX_JSON_DEPTH} (a net's options are flat): a damaged or "
                           "foreign file; re-save the net")
    try:
        options = json.loads(metadata.get(OPTIONS_KEY, "{}"))
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path}: header {OPTIONS_KEY!r} is not JSON ({exc})") from None
    if not isinstance(options, dict):
        raise WeightsError(f"{path}: header {OPTIONS_KEY!r} is not a JSON object")
    check_tensors(path, tensors)
    return metadata[POLICY_KEY], options, tensors, metadata


def is_loss_to_lr_net(policy: Any) -> bool:
    """A net from the loss to the LR with a scale (MLR-SNet, the MLP variant, a third party's):
    an ``nn.Module`` that follows :class:`metalr.contracts.protocols.LossToLRNet`."""
    return (isinstance(policy, torch.nn.Module) and isinstance(policy, LossToLRNet)
            and isinstance(policy.gamma, torch.Tensor))


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
    name, options, tensors, metadata = read_meta_learner(path, registry)
    if into is None:
        check_size_options(path, options)
        try:
            component = (registry or get_registry()).get("lr_policy", name)
            size = _count_on_meta(lambda: component.build(**options))
            if size is not None and size > MAX_PARAMETERS:
                raise WeightsError(f"{path}: the options in its header ({OPTIONS_KEY!r}) make a "
                                   f"{name!r} net of {size:,} parameters, over the limit "
                                   f"{MAX_PARAMETERS:,} for a meta-learned net: a damaged or "
                                   "foreign file; re-save the net")
            into = component.build(**options)
        except WeightsError:
            raise
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
        hint = _shape_hint(name, options, tensors, into, registry)
        raise WeightsError(f"{path}: its tensors do not fit this {name!r} net ({hint}): "
                           f"{first}") from None
    converted_by = metadata.get(CONVERTED_BY_KEY)
    if converted_by is not None:  # what the foreign file could not hold (the authors' ref_lr)
        net_formats(registry)[converted_by].complete(into)
    if frozen:
        if callable(getattr(into, "requires_grad_", None)):
            into.requires_grad_(False)
        into.frozen = True
    return into


def _shape_hint(name: str, saved: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                into: Any, registry: Registry | None) -> str:
    """The options of the file's header that give the net its shape where the net built from
    the recipe differs (each tried alone: the one whose value makes the tensors fit), or the
    usual suspects."""
    opts = getattr(into, "opts", None)
    if opts is None:
        return "different cell, hidden size or layers?"
    here = opts.model_dump()
    fixes = []
    # a header leaves out options at the value older files had (``header_omits``)
    for key, value in {**getattr(type(into), "header_omits", {}), **saved}.items():
        if key not in here or here[key] == value:
            continue
        try:
            trial = (registry or get_registry()).get("lr_policy", name).build(
                **{**here, key: value}).state_dict()
        except Exception:  # noqa: BLE001, S112 - a value this net cannot take: not the fix
            continue
        if trial.keys() == tensors.keys() and all(
                trial[k].shape == tensors[k].shape for k in tensors):
            fixes.append(f"{key}: {value!r} (here {here[key]!r})")
    if fixes:
        return ("the file's header has " + ", ".join(fixes)
                + ": set it in the recipe's lr_policy options")
    return "different cell, hidden size or layers?"


def ceiling_epochs(meta_epochs: int, k: int) -> list[int]:
    """The paper's rule (App. C) for k nets out of an E-epoch meta-train.

    Epochs ``ceil(E * l / (k - 1))`` for ``l = 0 .. k-1``, clipped to at least 1 (nets are saved
    after an epoch, so "epoch 0" means the first saved one). E = 200, k = 3 gives 1, 100, 200.
    """
    if k < 2:
        raise ValueError(f"the ceiling rule needs k >= 2 nets, got {k} (one net: pass its file)")
    if meta_epochs < 1:
        raise ValueError(f"meta_epochs must be >= 1, got {meta_epochs}")
    return [max(1, -(-meta_epochs * l // (k - 1))) for l in range(k)]  # exact integer ceiling
