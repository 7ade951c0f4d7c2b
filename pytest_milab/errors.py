"""The exceptions pytest-milab raises, each saying in one line what to fix.

    MilabError
    ├── ConfigError             an option, ini value or environment variable is wrong
    │   └── RosterError         a roster line is malformed (carries its line number)
    ├── SuiteError              a suite is written wrong: its hooks, reads, probe or markers
    │   └── StepMarkerError     a `milab_step` marker is malformed or disagrees with another
    ├── CredentialError         no Azure credential could be obtained
    ├── AzureError              an Azure call failed after retries (throttled, 5xx, refused)
    ├── ReadFailed              one declared ARM read could not decide (not a 404)
    ├── SshError                the machine could not be reached or the probe failed to run
    │   └── CommandTimedOut     internal to `vm.ssh`: a command outlived its deadline
    ├── StageFailed             provision mode: a stage Azure refused (its checks say why)
    └── StepOutcome             raised by checks to end a step other than passed/failed
        ├── Unverified          outcome `unverified`: the student's machine did not let the
        │                       grader see (counts as not passed)
        ├── CouldNotDecide      outcome `error`: the check could not decide (never costs points)
        └── NotPropagated       outcome `not-propagated`: a change exists but is not yet in force

`NeedsStep` (in `lab`) is an `AssertionError`, not a `MilabError`: a check that fails because
a prerequisite of the lab is missing fails like any assertion, with "needs <step>".
"""

from __future__ import annotations


class MilabError(Exception):
    """Base of every pytest-milab error."""


class ConfigError(MilabError):
    """An option, ini value or environment variable is wrong."""


class RosterError(ConfigError):
    """A roster line is malformed."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"roster {path}, line {line}: {message}")
        self.path = path
        self.line = line


class SuiteError(MilabError):
    """A suite is written wrong (an unknown step in `needs`, a read or probe part used but not
    declared, a hook returning the wrong thing): the message names the fix."""


class StepMarkerError(SuiteError):
    """A `milab_step` marker is malformed or disagrees with another."""


class ReadFailed(MilabError):
    """A read that could not decide (not a 404): the message says why."""


class ReadPending(Exception):
    """A read the lab has not answered yet: raised by `lab.read` only while the lab is still
    being read, when the engine asks the suite's machine early (see `Lab.arrived`)."""


class CredentialError(MilabError):
    """No Azure credential could be obtained."""


class AzureError(MilabError):
    """An Azure call failed after retries."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 throttled: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.throttled = throttled


class SshError(MilabError):
    """The machine could not be reached over SSH, or the probe did not run."""

    def __init__(self, message: str, *, refused: bool = False, machine: bool = False) -> None:
        super().__init__(message)
        # refused: the machine does not answer (its lab may explain why);
        # machine: it answered, but not as a machine that lets the grader see (garbage, a hang,
        # the grader's key refused); neither: the grader's side failed
        self.refused = refused
        self.machine = machine


class CommandTimedOut(SshError):
    """A command outlived its deadline (caught in `vm.ssh` and said as an SshError)."""

    def __init__(self, message: str = "the command did not finish in time") -> None:
        super().__init__(message)


class StepOutcome(MilabError):
    """A check ends its step with an outcome other than passed or failed."""

    outcome = "error"


class Unverified(StepOutcome):
    """The student's machine did not let the grader see: it answered garbage, hung, or refused
    SSH while it runs and nothing keeps SSH out. Counted, with no points."""

    outcome = "unverified"


class CouldNotDecide(StepOutcome):
    """The check could not decide (Azure throttled or failed, SSH broke)."""

    outcome = "error"


class NotPropagated(StepOutcome):
    """The change exists but had not taken effect within the deadline."""

    outcome = "not-propagated"


class StageFailed(MilabError):
    """A provision stage raised: its checks fail with this one-line reason (or end
    `not-propagated` when the stage was refused until the deadline for want of a grant still
    propagating)."""

    def __init__(self, stage: str, reason: str, *, propagating: bool = False) -> None:
        verb = "could not finish" if propagating else "failed"
        super().__init__(f"stage {stage!r} {verb}: {reason}")
        self.stage = stage
        self.reason = reason
        self.propagating = propagating
