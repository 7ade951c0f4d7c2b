"""The lab with one step broken, the way a student would break it: a stage left out, a value
changed, or one more stage that undoes part of the lab. `milab emulator --lab NAME:DEFECT`
builds one; the defect catalogue (tests/e2e/test_defect_catalogue.py) shows each check failing
on its defect with a reason naming the fix."""

from __future__ import annotations

import json
import uuid

from pytest_milab import Defect, ProvisionContext, role_definition_id

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


def contributor_to_reader(ctx):
    """The service principal ends up Reader, not Contributor, on the group."""
    auth = ctx.clients.authorization
    sp = ctx.graph("GET", f"/servicePrincipals(appId='{ctx.state['sp_app']['appId']}')")
    for ra in list(auth.role_assignments.list_for_scope(ctx.group_id)):
        if ra.principal_id == sp["id"]:
            auth.role_assignments.delete_by_id(ra.id)
    auth.role_assignments.create(ctx.group_id, str(uuid.uuid4()), {
        "role_definition_id": role_definition_id(ctx.subscription_id, "Reader"),
        "principal_id": sp["id"], "principal_type": "ServicePrincipal"})


def _all_stages_dropped() -> tuple[str, ...]:
    from .stages import STAGES

    return tuple(s.name for s in STAGES)


DEFECTS = [
    Defect("resource-group", "not found in subscription", drop=_all_stages_dropped()),
    Defect("key-vault", "no vault named", state={"vault_name": "kv-misnamed-000000"}),
    Defect("vault-permission-model", "kept 90 days", state={"retention_days": 90}),
    Defect("operator-access-policy", "get, list and set", after="service principal",
           extra=lambda ctx: _update_policy(ctx, "remove", ctx.operator_object_id,
                                            ["list", "set"])),
    Defect("vm", "not an Ubuntu image", state={"image": DEBIAN}),
    Defect("vm-identity", "no system-assigned identity", after="virtual machine",
           extra=no_identity),
    Defect("vm-tags", "vault=", after="virtual machine", extra=no_vault_tag,
           seen_directly=("imds-tags-path",)),
    Defect("reader-assignment", "no Reader assignment", drop=("reader assignment",),
           seen_directly=("reader-allowed", "reader-denied-before", "az-login-identity")),
    Defect("identity-access-policy", "no access policy for the VM identity",
           drop=("identity access policy",), seen_directly=("secret-read", "sp-secrets")),
    Defect("service-principal", "Contributor", after="service principal",
           extra=contributor_to_reader),
    Defect("ssh", "does not answer SSH", extra=close_ssh),  # port 22 closed once the lab was done
    Defect("jq", "jq is not installed", drop=("install jq",)),
    Defect("vault-denied-before", "not 403", after="identity access policy",
           extra=lambda ctx: _update_policy(ctx, "add", ctx.state["identity"], ["list"])),
    Defect("secret-read", "does not hold the lab's value",
           state={"secret_value": "TheCakeIsALie!"}),
    Defect("sp-secrets", "disagrees with client-id", after="service principal",
           extra=inconsistent_sp_json),
    Defect("sp-login", "AADSTS7000215", after="service principal", extra=drop_password),
    Defect("az-cli", "the Azure CLI is not installed", drop=("azure cli",)),
]
