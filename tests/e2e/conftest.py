from __future__ import annotations

import pytest
from e2ekit import suite_needs


@pytest.fixture(scope="session")
def needs():
    """Each step of the example suite with its declared prerequisites."""
    return suite_needs()
