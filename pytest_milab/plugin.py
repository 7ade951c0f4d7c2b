"""pytest hooks for pytest-milab."""
