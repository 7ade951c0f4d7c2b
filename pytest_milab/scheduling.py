"""pytest-xdist scheduling by lab: every check of one lab goes to the same worker, in order."""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling


class LabScheduling(LoadScopeScheduling):
    """Like `--dist loadscope`, with the lab (the test id's parameter) as the scope.

    Tests that grade no lab keep their module as their scope."""

    def _split_scope(self, nodeid: str) -> str:
        if nodeid.endswith("]") and "[" in nodeid:
            return "lab:" + nodeid[nodeid.rindex("[") + 1:-1]
        return nodeid.split("::", 1)[0]
