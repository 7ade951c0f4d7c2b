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


def _props(obj: Any) -> dict:
    """A resource's or rule's properties (ARM nests them; some callers pass them flat). ARM's
    JSON is data: anything not shaped as Azure shapes it reads as empty."""
    if not isinstance(obj, dict):
        return {}
    props = obj.get("properties") or obj
    return props if isinstance(props, dict) else {}


def _texts(value: Any) -> list[str]:
    """A field that holds one text or a list of them, as texts (anything else: none)."""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, list):
        return [str(v) for v in value if isinstance(v, (str, int)) and not isinstance(v, bool)]
    return []


def _covers_ssh(rule: Any) -> bool:
    """An inbound rule that covers TCP 22."""
    props = _props(rule)
    if str(props.get("direction", "")).lower() != "inbound":
        return False
    if str(props.get("protocol", "*")).lower() not in ("*", "tcp", "any"):
        return False
    ranges = _texts(props.get("destinationPortRanges")) + _texts(props.get("destinationPortRange"))
    for text in ranges:
        low, _, high = text.strip().partition("-")
        if low == "*":
            return True
        try:
            if int(low) <= 22 <= int(high or low):
                return True
        except ValueError:
            continue
    return False


def _priority(rule: Any) -> int:
    try:
        return int(_props(rule).get("priority", 65000))
    except (TypeError, ValueError):
        return 65000


def _well_formed(rules: Any) -> bool:
    return isinstance(rules, list) and all(
        isinstance(r, dict) and isinstance(r.get("properties") or {}, dict) for r in rules)


def nsg_blocking_ssh(nsgs: Any) -> str | None:
    """Why the NSGs keep SSH out, or None when they let it in (or may: an allow rule for some
    sources only may well include the grader). An NSG whose JSON is not shaped as Azure's
    explains nothing (None for it): a refusal it cannot explain is never the student's."""
    for nsg in nsgs if isinstance(nsgs, (list, tuple)) else ():
        rules = _props(nsg).get("securityRules") or []
        if not _well_formed([nsg]) or not _well_formed(rules):
            continue  # a rule that cannot be read might be the one letting SSH in
        rules = sorted((r for r in rules if _covers_ssh(r)), key=_priority)
        verdict = None
        for rule in rules:
            props = _props(rule)
            sources = [s.strip().lower() for s in _texts(props.get("sourceAddressPrefix"))
                       + _texts(props.get("sourceAddressPrefixes")) if s]
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
    statuses = view.get("statuses") if isinstance(view, dict) else None
    for status in statuses if isinstance(statuses, list) else []:
        code = str(status.get("code", "")) if isinstance(status, dict) else ""
        if code.startswith("PowerState/"):
            return code.split("/", 1)[1]
    return None
