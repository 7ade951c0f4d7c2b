"""A suite loaded outside a pytest run (the `milab` command, scripts): its conftest imported as
pytest imports it (the suite is a package) and its hooks called directly."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import SuiteError
from .suite import Suite


@dataclass
class LoadedSuite:
    path: Path
    conftest: ModuleType
    suite: Suite

    @property
    def spec(self) -> Any:
        return self.suite.spec

    def defects(self) -> dict:
        """The suite's defects by name (hook `pytest_milab_defects`), {} without any."""
        hook = getattr(self.conftest, "pytest_milab_defects", None)
        found = hook(spec=self.spec) if hook else None
        return {d.name: d for d in found or ()}


def _call(module: ModuleType, name: str, **kwargs) -> Any:
    hook = getattr(module, name, None)
    if hook is None:
        return None
    import inspect

    wanted = inspect.signature(hook).parameters
    return hook(**{k: v for k, v in kwargs.items() if k in wanted})


def load_suite(path: str | Path) -> LoadedSuite:
    """Import the suite at `path` (a folder with `__init__.py` and `conftest.py`)."""
    from .azure.reads import check_reads
    from .probe import Probe

    folder = Path(path).resolve()
    if not (folder / "conftest.py").is_file() or not (folder / "__init__.py").is_file():
        raise SuiteError(f"{path}: not a suite (a folder with __init__.py and conftest.py)")
    if str(folder.parent) not in sys.path:
        sys.path.insert(0, str(folder.parent))
    conftest = importlib.import_module(f"{folder.name}.conftest")
    spec = _call(conftest, "pytest_milab_spec", config=None)
    reads = _call(conftest, "pytest_milab_reads", spec=spec)
    probe = _call(conftest, "pytest_milab_probe", spec=spec)
    if probe is not None and not isinstance(probe, Probe):
        raise SuiteError(f"{path}: pytest_milab_probe returned {type(probe).__name__}, not a "
                         "pytest_milab.Probe")
    machine = None
    if hasattr(conftest, "pytest_milab_machine"):
        def machine(lab):
            return _call(conftest, "pytest_milab_machine", spec=spec, lab=lab)

    def stages():
        return _call(conftest, "pytest_milab_stages", config=None, spec=spec)

    suite = Suite(spec=spec, reads=check_reads(reads or ()), machine=machine, probe=probe,
                  _stages=stages)
    return LoadedSuite(folder, conftest, suite)
