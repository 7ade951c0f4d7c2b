"""Progress on a terminal: which lab is being judged, k of N, and waits for a grant to take
effect with their deadline. Quiet when output is not a terminal, so CI logs stay readable."""

from __future__ import annotations

import pytest

from .sharing import lab_scope
from .text import clean


class Progress:
    """Registered as a plugin: it sees each check start (an xdist worker's too, on the
    controller) and says so when a lab's first check starts."""

    def __init__(self, config: pytest.Config, run) -> None:
        self.config = config
        self.run = run
        self.seen: set[str] = set()
        self._targets: dict | None = None

    def _terminal(self):
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is None or not tr.isatty or self.config.get_verbosity() < 0:
            return None
        return tr

    @pytest.hookimpl(tryfirst=True)  # before the terminal names the test's file
    def pytest_runtest_logstart(self, nodeid: str, location) -> None:
        tr = self._terminal()
        if tr is None:
            return
        scope = lab_scope(nodeid)
        label = scope[len("lab:"):] if scope else None
        if label is None or label in self.seen:
            return
        if self._targets is None:
            self._targets = {t.label: t for t in self.run.settings.targets if not t.problem}
        if label not in self._targets:
            return
        self.seen.add(label)
        targets = self._targets
        target = targets[label]
        who = clean(label, 60) + (f" (group {clean(target.group, 60)})"
                                  if target.student else "")
        store = self.run.store
        gathered = store.gathered if store is not None else None
        count = f" (gathered {gathered[0]} of {gathered[1]})" if gathered else ""
        tr.write_line(f"milab: judging lab {len(self.seen)} of {len(targets)}: {who}{count}")

    def waiting(self, label: str, step: str, seconds_left: float) -> None:
        """Provision mode polls a check until its grant takes effect."""
        tr = self._terminal()
        if tr is not None:
            tr.write_line(f"milab: {clean(label, 60)}: {step} not in force yet; checking "
                          f"again for up to {seconds_left:.0f}s more")
