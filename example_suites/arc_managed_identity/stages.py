"""The Arc lab as stages, in the lab's order. The server exists before the lab (on real Azure the
spec names it: `ArcSpec(host=..., user=...)`); against a local Azure (`MILAB_LOCAL_AZURE=1`)
the first stage racks one through the local Azure's control endpoint, its stand-in for a server
in a rack. Onboarding runs the Connected Machine agent in the server, as the lab does:
`sudo azcmagent connect ... --access-token <the operator's ARM token>` (public docs: "azcmagent
connect"; for many servers, "Connect hybrid machines to Azure at scale" uses a service principal
with the "Azure Connected Machine Onboarding" role instead).

Each stage names the steps checked once it is done; the "denied before" steps are checked before
the grant that ends the denial. A stage's failure becomes a step's reason in the reports, so no
message here carries a command line, a token or a secret.
"""

from __future__ import annotations

import os
import secrets
import shlex
import uuid

from pytest_milab import ProvisionContext, Stage, role_definition_id

from .reads import HYBRID_COMPUTE

CONTROL = "https://control.localazure.test"  # the local Azure's control endpoint (racking)
ARM_SCOPE = "https://management.azure.com/.default"


def resource_group(ctx: ProvisionContext) -> None:
    ctx.clients.resource.resource_groups.create_or_update(
        ctx.group, {"location": ctx.spec.location, "tags": ctx.tags})


def secret_policy(ctx: ProvisionContext, object_id: str, secrets_: list[str]) -> dict:
    return {"tenantId": ctx.tenant_id, "objectId": object_id,
            "permissions": {"secrets": secrets_, "keys": [], "certificates": []}}


def key_vault(ctx: ProvisionContext) -> None:
    name = ctx.state.setdefault("vault_name", ctx.spec.vault_name(ctx.group_id))
    ctx.clients.keyvault.vaults.begin_create_or_update(ctx.group, name, {
        "location": ctx.spec.location, "tags": ctx.tags,
        "properties": {
            "tenantId": ctx.tenant_id, "sku": {"family": "A", "name": "standard"},
            "enableRbacAuthorization": ctx.state.get("rbac_vault", False),
            "softDeleteRetentionInDays": ctx.spec.retention_days,
            "accessPolicies": [secret_policy(ctx, ctx.operator_object_id, ["get", "list", "set"])],
        }}).result()


def secret(ctx: ProvisionContext) -> None:
    from azure.keyvault.secrets import SecretClient

    client = SecretClient(f"https://{ctx.state['vault_name']}.vault.azure.net", ctx.credential)
    value = ctx.state.get("secret_value", ctx.spec.secret_value)
    # The vault's creator policy, made a moment ago, may not be in force yet.
    ctx.until_allowed(lambda: client.set_secret(ctx.spec.secret_name, value),
                      what="setting the secret")


def _rack(ctx: ProvisionContext) -> dict:
    """A new server in the local Azure, reachable with the run's SSH key."""
    import requests

    token = ctx.credential.get_token(ARM_SCOPE).token
    names = [ctx.spec.machine_name] + [f"{ctx.spec.machine_name}-{secrets.token_hex(3)}"
                                       for _ in range(3)]
    body = {"user": ctx.spec.user, "publicKeys": [ctx.ssh_public_key]}
    if ctx.state.get("site_address"):  # a server behind its site's NAT
        body["siteAddress"] = ctx.state["site_address"]
    for name in names:  # its host name; taken by another lab's server: another one
        r = requests.post(f"{CONTROL}/machines", json={**body, "name": name},
                          headers={"Authorization": f"Bearer {token}"}, timeout=ctx.timeout)
        if r.status_code == 409:
            continue
        if r.status_code != 201:
            raise RuntimeError(f"the local Azure did not rack a server: {r.status_code} "
                               f"{r.text[:200]}")
        return r.json()
    raise RuntimeError("the local Azure did not rack a server: every name tried is taken")


def on_premises_server(ctx: ProvisionContext) -> None:
    if os.environ.get("MILAB_LOCAL_AZURE") == "1":
        server = ctx.state["server"] = _rack(ctx)
        ctx.ssh_host, ctx.ssh_user = server["address"], server["user"]
        return
    if not ctx.spec.host:
        raise RuntimeError("no on-premises server: name it in the suite's spec "
                           "(ArcSpec(host=..., user=...))")
    ctx.ssh_host, ctx.ssh_user = ctx.spec.host, ctx.spec.user


def machine_id(ctx: ProvisionContext) -> str:
    return f"{ctx.group_id}/providers/Microsoft.HybridCompute/machines/{ctx.spec.machine_name}"


def onboard(ctx: ProvisionContext) -> None:
    token = ctx.credential.get_token(ARM_SCOPE).token
    command = " ".join(["sudo", "azcmagent", "connect", *map(shlex.quote, [
        "--resource-group", ctx.group, "--tenant-id", ctx.tenant_id,
        "--location", ctx.spec.location, "--subscription-id", ctx.subscription_id,
        "--resource-name", ctx.spec.machine_name, "--access-token", token])])

    def scrub(text: str) -> str:
        return text.replace(token, "<token>")[:300]
    try:
        result = ctx.run_in_vm(command, timeout=300)
    except Exception as exc:  # noqa: BLE001 - said without the command line and its token
        raise RuntimeError(f"azcmagent connect could not run on the server: "
                           f"{type(exc).__name__}: {scrub(str(exc))}") from None
    if not result.ok:
        lines = (result.stderr.strip() or result.stdout.strip()).splitlines() or [""]
        raise RuntimeError(f"azcmagent connect exited {result.exit_code}: {scrub(lines[-1])}")
    status, body = ctx.clients.arm.get(machine_id(ctx), HYBRID_COMPUTE)
    ctx.state["identity"] = ((body or {}).get("identity") or {}).get("principalId") \
        if status == 200 else None


def assign(ctx: ProvisionContext, scope: str, role: str, principal: str) -> None:
    ctx.clients.authorization.role_assignments.create(scope, str(uuid.uuid4()), {
        "role_definition_id": role_definition_id(ctx.subscription_id, role),
        "principal_id": principal, "principal_type": "ServicePrincipal"})


def reader_assignment(ctx: ProvisionContext) -> None:
    assign(ctx, ctx.group_id, "Reader", ctx.state["identity"])


def identity_access_policy(ctx: ProvisionContext) -> None:
    ctx.clients.keyvault.vaults.update_access_policy(
        ctx.group, ctx.state["vault_name"], "add",
        {"properties": {"accessPolicies": [secret_policy(ctx, ctx.state["identity"], ["get"])]}})


STAGES = [
    Stage("resource group", resource_group, checks=("resource-group",)),
    Stage("key vault", key_vault, checks=("key-vault",)),
    Stage("secret", secret),
    Stage("on-premises server", on_premises_server),
    Stage("onboard", onboard,
          checks=("machine", "machine-identity", "ssh", "himds-challenge", "management-token",
                  "reader-denied-before", "wrong-audience")),
    Stage("reader assignment", reader_assignment,
          checks=("reader-assignment", "reader-allowed"), poll=("reader-allowed",)),
    Stage("identity access policy", identity_access_policy,
          checks=("identity-access-policy", "secret-read"), poll=("secret-read",)),
]
