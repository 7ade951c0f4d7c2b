"""Where a lab's machine is and why it may not answer SSH: the suite says which machine
(`Machine`, hook `pytest_milab_machine`), the engine reasons about reaching it.

Whether an NSG lets TCP 22 in follows Azure's rules ("Network security groups: how network
security groups filter network traffic"): by priority, the first inbound rule that covers the
port decides; without one, the default DenyAllInBound does."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_ANY_SOURCE = ("*", "any", "internet", "0.0.0.0/0", "::/0")


@dataclass(frozen=True)
class Machine:
    """The lab's machine to SSH into, as the suite finds it in the lab's reads.

    `host` is an address or a name from the grader's ssh config; a roster's `ssh_host` and
    `ssh_user` (or `--milab-ssh-user`) win over `host` and `user`. `nsgs` (ARM JSON of the
    network security groups on its path) and `instance_view` (a VM's instanceView path, read
    only when SSH is refused) let the engine tell a refusal the lab explains (the student's to
    fix) from one it does not (graded `error`, never `failed`). `source` is where the machine's
    identity gets tokens: "imds" (an Azure VM) or "himds" (an Azure Arc-enabled server)."""

    host: str | None = None
    user: str | None = None
    nsgs: Sequence[dict] = ()
    instance_view: str | None = None
    source: str = "imds"
    absent: str | None = None  # the lab has no machine to reach: why, said to the student

    @classmethod
    def missing(cls, reason: str) -> Machine:
        """The lab has no such machine (or it cannot have an address): the in-machine steps
        fail with "needs ssh: <reason>"."""
        return cls(absent=reason)


def _props(obj: dict) -> dict:
    return obj.get("properties") or obj


def _covers_ssh(rule: dict) -> bool:
    """An inbound rule that covers TCP 22."""
    props = _props(rule)
    if str(props.get("direction", "")).lower() != "inbound":
        return False
    if str(props.get("protocol", "*")).lower() not in ("*", "tcp", "any"):
        return False
    ranges = list(props.get("destinationPortRanges") or [])
    if props.get("destinationPortRange"):
        ranges.append(props["destinationPortRange"])
    for text in ranges:
        low, _, high = str(text).strip().partition("-")
        if low == "*":
            return True
        try:
            if int(low) <= 22 <= int(high or low):
                return True
        except ValueError:
            continue
    return False


def _priority(rule: dict) -> int:
    try:
        return int(_props(rule).get("priority", 65000))
    except (TypeError, ValueError):
        return 65000


def nsg_blocking_ssh(nsgs: Sequence[dict]) -> str | None:
    """Why the NSGs keep SSH out, or None when they let it in (or may: an allow rule for some
    sources only may well include the grader)."""
    for nsg in nsgs or ():
        rules = sorted((r for r in _props(nsg).get("securityRules") or [] if _covers_ssh(r)),
                       key=_priority)
        verdict = None
        for rule in rules:
            props = _props(rule)
            sources = [str(s).strip().lower() for s in
                       [props.get("sourceAddressPrefix"), *(props.get("sourceAddressPrefixes")
                                                            or [])] if s]
            if str(props.get("access", "")).lower() == "allow":
                verdict = "allowed"
                break
            if any(s in _ANY_SOURCE for s in sources):
                verdict = f"its rule {rule.get('name')!r} denies inbound TCP 22"
                break
        if verdict is None:
            verdict = "no rule allows inbound TCP 22"
        if verdict != "allowed":
            return f"NSG {nsg.get('name')!r} on the machine's network path: {verdict}"
    return None


def power_state(view: Any) -> str | None:
    """`running`, `deallocated`, ... from a VM's instance view."""
    for status in (view or {}).get("statuses") or [] if isinstance(view, dict) else []:
        code = str(status.get("code", ""))
        if code.startswith("PowerState/"):
            return code.split("/", 1)[1]
    return None
