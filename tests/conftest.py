from __future__ import annotations

import pytest

from metalr.plugins import get_registry


@pytest.fixture(scope="session")
def registry():
    """The registry as a user gets it: filled from the installed distributions' entry points."""
    return get_registry()
