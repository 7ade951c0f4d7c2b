"""pytest-xdist scheduling by lab: every check of one lab goes to the same worker, in order,
and to the worker whose share of the labs it is (see `sharing`).

Built on xdist's documented `pytest_xdist_make_scheduler` hook and its `LoadScopeScheduling`,
whose `_split_scope` and `_assign_work_unit` it overrides: those are not a public API, so the
project pins the pytest-xdist versions it is tested with (pyproject.toml)."""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling

from .sharing import lab_scope, owner_index


class LabScheduling(LoadScopeScheduling):
    """Like `--dist loadscope`, with the lab (the test id's parameter) as the scope and each lab
    sent to the worker that owns it. Tests that grade no lab keep their module as their scope
    and go to any worker."""

    def __init__(self, config, log=None) -> None:
        super().__init__(config, log)
        self._owners: dict[str, str] | None = None

    def _split_scope(self, nodeid: str) -> str:
        return lab_scope(nodeid) or nodeid.split("::", 1)[0]

    def _owner_of(self, scope: str) -> str | None:
        if self._owners is None:
            # As the workers count themselves (`workercount`: all that were started).
            counts = [n.workerinput.get("workercount", 0) for n in self.nodes]
            workers = max(counts + [len(self.nodes), 1])
            order: dict[str, None] = {}
            for nodeid in self.collection or ():
                lab = lab_scope(nodeid)
                if lab is not None:
                    order.setdefault(lab, None)
            self._owners = {lab: f"gw{owner_index(k, workers)}" for k, lab in enumerate(order)}
        return self._owners.get(scope)

    def _assign_work_unit(self, node) -> None:
        me = getattr(node.gateway, "id", None)
        live = {getattr(n.gateway, "id", None) for n in self.assigned_work}
        for scope in self.workqueue:
            owner = self._owner_of(scope)
            if owner is None or owner == me or owner not in live:
                break  # its own lab, a lab whose owner is gone, or a test that grades no lab
        else:
            return  # the labs left belong to other workers: this one has finished its share
        work_unit = self.workqueue.pop(scope)
        self.assigned_work.setdefault(node, {})[scope] = work_unit
        collection = self.registered_collections[node]
        node.send_runtest_some([collection.index(nodeid)
                                for nodeid, completed in work_unit.items() if not completed])

    def mark_test_complete(self, node, item_index: int, duration: float = 0) -> None:
        """As loadscope does, then forget a lab once all its checks are done: xdist counts the
        pending checks of every scope a worker was ever given, after each test, which grows
        with the square of the class (seconds of CPU for a few thousand checks)."""
        nodeid = self.registered_collections[node][item_index]
        scope = self._split_scope(nodeid)
        work_unit = self.assigned_work[node][scope]
        work_unit[nodeid] = True
        if all(work_unit.values()):
            del self.assigned_work[node][scope]
        self._reschedule(node)

