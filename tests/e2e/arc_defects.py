"""Arc labs with one step broken, the way a student would break it: the Arc suite's stages with
one stage dropped, a value changed, or one more stage that undoes part of the lab."""

from __future__ import annotations

import uuid
from dataclasses import replace

from e2ekit import ARC_SUITE, suite_module, suite_stages

from pytest_milab import ProvisionContext, Stage, role_definition_id


def _stages_module():
    return suite_module("stages", ARC_SUITE)


def identity_removed(ctx: ProvisionContext) -> None:
    """The Arc resource's system identity switched off (PATCH identity None)."""
    stages = _stages_module()
    ctx.clients.resource.resources.begin_update_by_id(
        stages.machine_id(ctx), {"identity": {"type": "None"}},
        api_version=stages.HYBRID_COMPUTE).result()


def no_sudo(ctx: ProvisionContext) -> None:
    """The server's admin user may no longer sudo without a password, and is not in the himds
    group: HIMDS's key file is out of its reach (the local Azure's control endpoint stands in
    for an administrator editing /etc/sudoers.d)."""
    import requests

    stages = _stages_module()
    token = ctx.credential.get_token(stages.ARM_SCOPE).token
    r = requests.patch(f"{stages.CONTROL}/machines/{ctx.state['server']['name']}",
                       json={"sudo": False}, headers={"Authorization": f"Bearer {token}"},
                       timeout=30)
    r.raise_for_status()


def contributor_too(ctx: ProvisionContext) -> None:
    """Besides Reader, the identity got Contributor on the group: it may write there."""
    ctx.clients.authorization.role_assignments.create(ctx.group_id, str(uuid.uuid4()), {
        "role_definition_id": role_definition_id(ctx.subscription_id, "Contributor"),
        "principal_id": ctx.state["identity"], "principal_type": "ServicePrincipal"})


def _without(stages, name):
    return [s for s in stages if s.name != name]


def _extra(name, fn):
    return Stage(f"defect: {name}", fn)


def broken(defect: str) -> tuple[list[Stage], dict]:
    """The stages and initial state of an Arc lab with `defect` (a step id) broken."""
    stages = [replace(s, checks=(), poll=()) for s in suite_stages(ARC_SUITE)]
    state: dict = {}
    if defect == "resource-group":
        return [], state
    if defect == "key-vault":
        state["vault_name"] = "kv-misnamed-" + "0" * 6
    elif defect == "machine":  # the server is racked but never onboarded
        stages = _without(stages, "onboard")
    elif defect == "machine-identity":
        stages = stages + [_extra(defect, identity_removed)]
    elif defect == "himds-challenge":
        stages = stages + [_extra(defect, no_sudo)]
    elif defect == "reader-assignment":
        stages = _without(stages, "reader assignment")
    elif defect == "identity-access-policy":
        stages = _without(stages, "identity access policy")
    elif defect == "reader-denied-before":
        stages = stages + [_extra(defect, contributor_too)]
    elif defect == "secret-read":
        state["secret_value"] = "StillAliveOnPrem!"
    else:
        raise ValueError(f"no such defect: {defect}")
    return stages, state
