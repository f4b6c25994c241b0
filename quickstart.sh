#!/bin/sh
# Sets up .venv on first use (torch, metalr and its plugins, test tools), then runs the quickstart
# recipe. Extra arguments are recipe overrides, e.g. `sh quickstart.sh train.epochs=20`.
# `sh quickstart.sh --setup-only` stops after the set-up (CI uses it).
set -e
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
# The pin lives here, not in pyproject.toml (which asks for torch>=2.4): these releases are the
# ones this project's machines install from local disk. Override for other machines.
TORCH_SPEC=${METALR_TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
if [ ! -x .venv/bin/metalr ]; then
    echo "setting up .venv (torch takes a few minutes) ..."
    "$PYTHON" -m venv .venv
    # --no-cache-dir: torch's CUDA wheels are ~5 GB; a second copy in pip's cache once filled a
    # CI machine's disk ("No space left on device").
    # shellcheck disable=SC2086
    .venv/bin/pip install --quiet --no-cache-dir $TORCH_SPEC
    EXTRAS="test,alternatives,rl,submitit,search,lightning,transformers,timm"
    .venv/bin/pip install --quiet --no-cache-dir -e ".[$EXTRAS]"
fi
if [ "$1" = "--setup-only" ]; then
    exit 0
fi
exec .venv/bin/metalr run recipes/quickstart.yaml "$@"
