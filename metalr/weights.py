"""Meta-learned nets on disk: safetensors only, so loading a file never runs code from it.

The header carries the registered policy name and its options, which is all that is needed to
rebuild the net through the registry before its tensors are loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from metalr.plugins import Registry, get_registry

POLICY_KEY = "metalr.policy"
OPTIONS_KEY = "metalr.options"


class WeightsError(ValueError):
    """A file that is not a metalr meta-learner in safetensors format."""


def save_meta_learner(
    path: str | Path, policy_name: str, options: dict[str, Any], policy: Any,
    extra: dict[str, str] | None = None,
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    metadata = {POLICY_KEY: policy_name, OPTIONS_KEY: json.dumps(options), **(extra or {})}
    tmp = path.with_suffix(path.suffix + ".part")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)  # never leave a half-written net behind
    return path


def read_meta_learner(path: str | Path) -> tuple[str, dict[str, Any], dict[str, torch.Tensor], dict[str, str]]:
    """Return ``(policy name, options, tensors, metadata)`` of a saved net."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
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
    return metadata[POLICY_KEY], json.loads(metadata.get(OPTIONS_KEY, "{}")), tensors, metadata


def load_meta_learner(path: str | Path, registry: Registry | None = None) -> Any:
    """Rebuild a saved meta-learner through the registry and load its parameters."""
    name, options, tensors, _ = read_meta_learner(path)
    policy = (registry or get_registry()).get("lr_policy", name).build(**options)
    policy.load_state_dict(tensors)
    return policy
