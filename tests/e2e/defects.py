"""Labs with one step broken, the way a student would break it: the suite's stages with one
stage dropped, a value changed, or one more stage that undoes part of the lab."""

from __future__ import annotations

import json
from dataclasses import replace

from e2ekit import suite_stages

from pytest_milab import ProvisionContext, Stage, role_definition_id

DEBIAN = {"publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"}


def _policy(ctx: ProvisionContext, object_id: str, secrets: list[str]) -> dict:
    return {"tenantId": ctx.tenant_id, "objectId": object_id,
            "permissions": {"secrets": secrets, "keys": [], "certificates": []}}


def _update_policy(ctx: ProvisionContext, kind: str, object_id: str, secrets: list[str]) -> None:
    ctx.clients.keyvault.vaults.update_access_policy(
        ctx.group, ctx.state["vault_name"], kind,
        {"properties": {"accessPolicies": [_policy(ctx, object_id, secrets)]}})


def _vm_patch(ctx: ProvisionContext, body: dict) -> None:
    ctx.clients.compute.virtual_machines.begin_update(ctx.group, ctx.spec.vm_name, body).result()


def no_identity(ctx):
    _vm_patch(ctx, {"identity": {"type": "None"}})
    ctx.state["identity"] = None


def no_vault_tag(ctx):
    tags = dict(ctx.clients.compute.virtual_machines.get(ctx.group, ctx.spec.vm_name).tags)
    tags.pop("vault")
    _vm_patch(ctx, {"tags": tags})


def close_ssh(ctx):
    net = ctx.clients.network
    nsg = net.network_security_groups.get(ctx.group, f"{ctx.spec.vm_name}NSG")
    net.network_security_groups.begin_create_or_update(ctx.group, nsg.name, {
        "location": nsg.location, "properties": {"securityRules": []}}).result()


def inconsistent_sp_json(ctx):
    from azure.keyvault.secrets import SecretClient

    client = SecretClient(f"https://{ctx.state['vault_name']}.vault.azure.net", ctx.credential)
    sp = json.loads(client.get_secret("service-principal").value)
    sp["appId"] = "00000000-0000-0000-0000-000000000000"
    client.set_secret("service-principal", json.dumps(sp, separators=(",", ":")))


def drop_password(ctx):
    ctx.graph("POST", f"/applications/{ctx.state['sp_app']['id']}/removePassword",
              {"keyId": ctx.state["sp_password_key"]})


def _without(stages, name):
    return [s for s in stages if s.name != name]


def _after(stages, name, stage):
    out = []
    for s in stages:
        out.append(s)
        if s.name == name:
            out.append(stage)
    return out


def _extra(name, fn):
    return Stage(f"defect: {name}", fn)


def broken(defect: str) -> tuple[list[Stage], dict]:
    """The stages and initial state of a lab with `defect` (a step id) broken."""
    stages = [replace(s, checks=(), poll=()) for s in suite_stages()]
    state: dict = {}
    if defect == "resource-group":
        return [], state
    if defect == "key-vault":
        state["vault_name"] = "kv-misnamed-" + "0" * 6
    elif defect == "vault-permission-model":
        state["retention_days"] = 90
    elif defect == "operator-access-policy":
        stages = _after(stages, "service principal", _extra(defect, lambda ctx: _update_policy(
            ctx, "remove", ctx.operator_object_id, ["list", "set"])))
    elif defect == "vm":
        state["image"] = DEBIAN
    elif defect == "vm-identity":
        stages = _after(stages, "virtual machine", _extra(defect, no_identity))
    elif defect == "vm-tags":
        stages = _after(stages, "virtual machine", _extra(defect, no_vault_tag))
    elif defect in ("reader-assignment", "identity-access-policy", "jq", "az-cli"):
        stage = {"reader-assignment": "reader assignment", "jq": "install jq",
                 "identity-access-policy": "identity access policy", "az-cli": "azure cli"}
        stages = _without(stages, stage[defect])
    elif defect == "service-principal":
        stages = _after(stages, "service principal", _extra(defect, contributor_to_reader))
    elif defect == "ssh":  # port 22 closed once the lab was done
        stages = stages + [_extra(defect, close_ssh)]
    elif defect == "vault-denied-before":
        stages = _after(stages, "identity access policy", _extra(defect, lambda ctx: _update_policy(
            ctx, "add", ctx.state["identity"], ["list"])))
    elif defect == "secret-read":
        state["secret_value"] = "TheCakeIsALie!"
    elif defect == "sp-secrets":
        stages = _after(stages, "service principal", _extra(defect, inconsistent_sp_json))
    elif defect == "sp-login":
        stages = _after(stages, "service principal", _extra(defect, drop_password))
    else:
        raise ValueError(f"no such defect: {defect}")
    return stages, state


def contributor_to_reader(ctx):
    """The service principal ends up Reader, not Contributor, on the group."""
    import uuid

    auth = ctx.clients.authorization
    sp = ctx.graph("GET", f"/servicePrincipals(appId='{ctx.state['sp_app']['appId']}')")
    for ra in list(auth.role_assignments.list_for_scope(ctx.group_id)):
        if ra.principal_id == sp["id"]:
            auth.role_assignments.delete_by_id(ra.id)
    auth.role_assignments.create(ctx.group_id, str(uuid.uuid4()), {
        "role_definition_id": role_definition_id(ctx.subscription_id, "Reader"),
        "principal_id": sp["id"], "principal_type": "ServicePrincipal"})
