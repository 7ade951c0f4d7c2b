"""Hooks a suite may implement in its conftest."""

from __future__ import annotations

import pytest


@pytest.hookspec(firstresult=True)
def pytest_milab_stages(config):
    """Return the lab's `Stage`s in the lab's order: provision mode builds the lab with them
    (checking each step when the lab reaches it), and `--milab-emulator` builds its demo lab."""
