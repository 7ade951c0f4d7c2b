"""Which worker grades which lab: the share a worker computes from its items and the one the
xdist scheduler sends must agree; a lab whose owner is gone still gets graded."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pytest_milab.sharing import lab_scope, lab_share

pytest.importorskip("xdist")
from pytest_milab.scheduling import LabScheduling  # noqa: E402


def test_lab_share_deals_labs_round_robin():
    labs = ["a", "b", "c", "d", "e"]
    assert lab_share(labs, "gw0", 2) == ["a", "c", "e"]
    assert lab_share(labs, "gw1", 2) == ["b", "d"]
    assert lab_share(labs, "gw2", 3) == ["c"]
    assert lab_share(labs, "main", 2) == labs  # not an xdist worker: every lab


def test_lab_scope_is_the_test_ids_parameter():
    assert lab_scope("suite/test_x.py::test_y[student-7]") == "lab:student-7"
    assert lab_scope("suite/test_x.py::test_y") is None


class FakeNode:
    def __init__(self, number: int, workers: int) -> None:
        self.gateway = SimpleNamespace(id=f"gw{number}")
        self.workerinput = {"workerid": f"gw{number}", "workercount": workers}
        self.shutting_down = False
        self.sent: list[int] = []

    def send_runtest_some(self, indices) -> None:
        self.sent += list(indices)

    def shutdown(self) -> None:
        self.shutting_down = True


def _collection(labs, checks=("test_a", "test_b")):
    return ["suite/test_m.py::test_plain"] + [f"suite/test_m.py::{c}[{lab}]"
                                              for lab in labs for c in checks]


def _scheduler(nodes, collection):
    config = SimpleNamespace(option=SimpleNamespace(loadscopereorder=False, maxworkerrestart=0,
                                                    numprocesses=len(nodes)),
                             getvalue=lambda name: [f"{len(nodes)}*popen"] if name == "tx"
                             else None)
    sched = LabScheduling(config)
    for node in nodes:
        sched.add_node(node)
        sched.add_node_collection(node, collection)
    return sched


def _labs_sent(node, collection) -> set[str]:
    return {lab_scope(collection[i])[4:] for i in node.sent if lab_scope(collection[i])}


def test_each_lab_goes_to_the_worker_that_gathers_it():
    labs = ["s1", "s2", "s3", "s4", "s5"]
    collection = _collection(labs)
    nodes = [FakeNode(0, 2), FakeNode(1, 2)]
    sched = _scheduler(nodes, collection)
    sched.schedule()
    # Finish whatever was sent, until the queue is empty, as workers would.
    for _ in range(20):
        for node in nodes:
            for i in list(node.sent):
                if not sched.assigned_work[node].get(sched._split_scope(collection[i]), {}).get(
                        collection[i], True):
                    sched.mark_test_complete(node, i)
        if not sched.workqueue:
            break
    for k, node in enumerate(nodes):
        assert _labs_sent(node, collection) == set(lab_share(labs, f"gw{k}", 2))
    # The test that grades no lab ran somewhere, once.
    assert sum(collection.index("suite/test_m.py::test_plain") in n.sent for n in nodes) == 1


def test_a_lab_whose_owner_is_gone_goes_to_another_worker():
    labs = ["s1", "s2"]
    collection = _collection(labs)
    nodes = [FakeNode(0, 2), FakeNode(1, 2)]
    sched = _scheduler(nodes, collection)
    sched.remove_node(nodes[1])  # gw1 crashed before it was given anything
    sched.schedule()
    for _ in range(20):
        for i in list(nodes[0].sent):
            scope = sched._split_scope(collection[i])
            if not sched.assigned_work[nodes[0]].get(scope, {}).get(collection[i], True):
                sched.mark_test_complete(nodes[0], i)
        if not sched.workqueue:
            break
    assert _labs_sent(nodes[0], collection) == {"s1", "s2"}
