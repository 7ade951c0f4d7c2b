"""The Arc lab with one step broken, the way a student (or the server's administrator) would
break it: a stage left out, a value changed, or one more stage that undoes part of the lab.
`milab emulator --lab NAME:DEFECT` builds one; the defect catalogue (tests/e2e/test_arc_suite.py)
shows each check failing on its defect with a reason naming the fix.

Steps no student can break are shown failing by the local Azure misbehaving on purpose (its
quirks): `management-token`, `reader-allowed` and `wrong-audience` check Azure's own behaviour.
`ssh` on an on-premises server fails only when it has no address to reach (the grader then
needs the roster's ssh_host); a server that refuses SSH with nothing in Azure to explain it
ends `ssh` and every in-machine step `unverified` (counted, no points), by the engine's rule."""

from __future__ import annotations

import uuid

from pytest_milab import Defect, ProvisionContext, role_definition_id

from .reads import HYBRID_COMPUTE
from .stages import ARM_SCOPE, CONTROL, machine_id


def no_identity(ctx: ProvisionContext) -> None:
    """The Arc resource's system identity switched off (PATCH identity None)."""
    ctx.clients.resource.resources.begin_update_by_id(
        machine_id(ctx), {"identity": {"type": "None"}}, api_version=HYBRID_COMPUTE).result()
    ctx.state["identity"] = None


def no_sudo(ctx: ProvisionContext) -> None:
    """The server's admin user may no longer sudo without a password, and is not in the himds
    group: HIMDS's key file is out of its reach. (In a local Azure its control endpoint stands
    in for an administrator editing /etc/sudoers.d.)"""
    import requests

    token = ctx.credential.get_token(ARM_SCOPE).token
    r = requests.patch(f"{CONTROL}/machines/{ctx.state['server']['name']}",
                       json={"sudo": False}, headers={"Authorization": f"Bearer {token}"},
                       timeout=ctx.timeout)
    r.raise_for_status()


def contributor_too(ctx: ProvisionContext) -> None:
    """Besides Reader, the identity got Contributor on the group: it may write there."""
    ctx.clients.authorization.role_assignments.create(ctx.group_id, str(uuid.uuid4()), {
        "role_definition_id": role_definition_id(ctx.subscription_id, "Contributor"),
        "principal_id": ctx.state["identity"], "principal_type": "ServicePrincipal"})


def _all_stages() -> tuple[str, ...]:
    from .stages import STAGES

    return tuple(s.name for s in STAGES)


DEFECTS = [
    Defect("resource-group", "not found in subscription", drop=_all_stages()),
    Defect("key-vault", "no vault named", state={"vault_name": "kv-misnamed-000000"}),
    # The server is racked but never onboarded.
    Defect("machine", "no Arc-enabled server named 'onprem1'", drop=("onboard",)),
    Defect("machine-identity", "no system-assigned identity", extra=no_identity),
    Defect("himds-challenge", "add the user to the himds group", extra=no_sudo),
    Defect("reader-assignment", "no Reader assignment", drop=("reader assignment",),
           seen_directly=("reader-allowed", "reader-denied-before")),
    Defect("identity-access-policy", "no access policy for the server's identity",
           drop=("identity access policy",), seen_directly=("secret-read",)),
    Defect("reader-denied-before", "should be read-only", extra=contributor_too),
    Defect("secret-read", "does not hold the lab's value",
           state={"secret_value": "StillAliveOnPrem!"}),
]
