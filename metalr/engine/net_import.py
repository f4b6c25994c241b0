"""``metalr nets import``: foreign nets (the authors' released ``.pth``) converted once into a
folder of safetensors with a ``card.md``, so that they load like any net metalr saved.

What a file holds and how it maps onto a policy is its net format's
(:class:`metalr.contracts.protocols.NetFormat`, found through the registry by
:func:`metalr.engine.weights.read_meta_learner`); this module only checks the folder, saves the nets
with their provenance and writes the card the format composes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

from metalr.contracts.protocols import ImportedNet
from metalr.contracts.registry import Registry
from metalr.engine.weights import (
    CONVERTED_BY_KEY,
    FORMAT_KEY,
    SHA256_KEY,
    SOURCE_KEY,
    WeightsError,
    is_loss_to_lr_net,
    load_meta_learner,
    net_formats,
    read_meta_learner,
    save_meta_learner,
)


def import_nets(files: list[str | Path], out: str | Path, gamma: float | None = None,
                registry: Registry | None = None) -> list[Path]:
    """Convert foreign net files into safetensors in ``out``, with a ``card.md``.

    Each output's header and the card record the source file and its sha256, so a converted
    net can be traced to the exact file it came from. ``out`` must hold no nets yet (a stale
    net would become an extra phase). The folder then works wherever a net is named. ``gamma``
    sets every net's LR bound (unset: the one its format sets). Every file is checked before
    anything is written.
    """
    if gamma is not None and not (math.isfinite(gamma) and gamma > 0):
        # a NaN or inf gamma would be saved as theta
        raise WeightsError(f"--gamma must be a finite number > 0 (the LR bound), got {gamma}")
    out = Path(out)
    if out.is_dir() and any(out.glob("*.safetensors")):
        raise WeightsError(f"{out}: already holds nets; choose an empty or new folder")
    sources = [Path(f) for f in files]
    read = [_read(src, registry) for src in sources]  # every file checked before any is written
    format_name = read[0].format_name
    for src, one in zip(sources, read):
        if one.format_name != format_name:
            raise WeightsError(f"{src}: a {one.format_name!r} file, but {sources[0]} a "
                               f"{format_name!r} one; import the files of one format at a time")
    fmt = net_formats(registry)[format_name]
    targets = [out / fmt.target_name(src) for src in sources]
    if len(set(targets)) != len(targets):
        raise WeightsError(f"two sources map to the same output name: {[t.name for t in targets]}")
    imported = []
    for src, target, one in zip(sources, targets, read):
        if gamma is not None:
            if not is_loss_to_lr_net(one.net):
                raise WeightsError(f"{src}: holds a {one.policy!r} net, which has no LR bound to "
                                   "set: import it without --gamma")
            one.net.set_gamma(gamma)
            fmt.complete(one.net)  # what the format derives from the bound (the authors' ref_lr)
        imported.append(ImportedNet(src, target, one.sha256, one.net))
    for one, item in zip(read, imported):
        save_meta_learner(item.target, one.policy, item.net, extra={
            FORMAT_KEY: fmt.label, SOURCE_KEY: item.source.name, SHA256_KEY: item.sha256})
    (out / "card.md").write_text(fmt.card(imported, gamma))
    return targets


class _Foreign(NamedTuple):
    policy: str
    format_name: str
    net: Any
    sha256: str


def _read(src: Path, registry: Registry | None) -> _Foreign:
    """One foreign file, loaded as a frozen net; a metalr net (safetensors) is refused."""
    policy, _, _, metadata = read_meta_learner(src, registry)
    net = load_meta_learner(src, frozen=True, registry=registry)  # every check of a loaded net
    if CONVERTED_BY_KEY not in metadata:
        raise WeightsError(f"{src}: already a metalr net (safetensors), not a foreign format "
                           "to convert; name the file itself wherever a net is named")
    return _Foreign(policy, metadata[CONVERTED_BY_KEY], net, metadata[SHA256_KEY])
