"""The hooks a suite implements in its conftest: the lab it grades, in the engine's terms.

The engine gathers, grades, reports, schedules and provisions; the suite says what its lab is.
Each hook is optional and the first conftest that answers wins. A minimal suite::

    from pytest_milab import Read, Machine, Probe, probe

    def pytest_milab_spec(config):
        return MySpec()                       # any object: the lab's names and values

    def pytest_milab_reads(spec):
        return [Read("vm", "{group_id}/providers/Microsoft.Compute/virtualMachines/"
                           "{spec.vm_name}", "2024-07-01")]

    def pytest_milab_machine(spec, lab):
        vm = lab.read("vm")
        return Machine(host=..., user=...) if vm else Machine.missing("there is no VM")

    def pytest_milab_probe(spec):
        return Probe([probe.token("arm_token", "https://management.azure.com/")])

    def pytest_milab_stages(config, spec):
        return [Stage("resource group", create_group, checks=("resource-group",)), ...]

Checks then judge `lab.read(name)` and `lab.probe(name)`; see `pytest_milab.lab.Lab`.
"""

from __future__ import annotations

import pytest


@pytest.hookspec(firstresult=True)
def pytest_milab_spec(config):
    """Return the lab's constants (any object, usually a frozen dataclass). Discover mode,
    provision mode and the demo all use it, and the `milab_spec` fixture returns it. A `group`
    attribute, when present, names the group the demo builds."""


@pytest.hookspec(firstresult=True)
def pytest_milab_reads(spec):
    """Return the `Read`s the engine makes of each lab's control plane (besides the group
    itself, always read as "group"). Each is a GET through the engine's paced, retrying ARM
    reader; one that could not be read ends the checks that use it `error`. A read with
    `on_refusal=True` (what explains a refused SSH, such as NSGs) is made only when the
    machine refuses SSH: `pytest_milab_machine` sees it as None until then."""


@pytest.hookspec(firstresult=True)
def pytest_milab_machine(spec, lab):
    """Return the lab's `Machine` (where to SSH, what may keep SSH out), found in `lab`'s reads,
    or `Machine.missing(reason)` when the lab has none. Not implemented: no in-machine probe.

    It is also asked while the lab is still being read, so the grader can log in sooner:
    `lab.read` of a read still in flight raises `ReadPending` (let it through; it is asked
    again as more reads come in), and `lab.arrived(name)` says whether a read is in. Only a
    machine the lab, read in full, names again (same host, user, port and key) keeps that
    early login; any other is dropped and reached anew."""


@pytest.hookspec(firstresult=True)
def pytest_milab_probe(spec):
    """Return the `Probe` run once in each lab's machine (parts from `pytest_milab.probe`)."""


@pytest.hookspec(firstresult=True)
def pytest_milab_stages(config, spec):
    """Return the lab's `Stage`s in the lab's order: provision mode builds the lab with them,
    checking each step when the lab reaches it, and `--milab-emulator` builds its demo lab."""


@pytest.hookspec(firstresult=True)
def pytest_milab_defects(spec):
    """Return `Defect`s: labs with one step broken the way a student would break it, built
    with the suite's stages (`milab emulator --lab NAME:DEFECT`, a suite's defect catalogue)."""


@pytest.hookspec(firstresult=True)
def pytest_milab_onboard(spec, group, public_key, user):
    """Return the shell lines a student runs to let the grader log in to the lab's machine as
    its own account `user` with `public_key` (`milab onboard` prints them after the Reader
    assignment)."""
