"""pytest-milab: verify deployed Azure managed-identity labs."""

__version__ = "0.1.0"
