"""Microsoft.KeyVault vaults: access policies, soft delete, recover and purge (“Vaults - Create Or Update (Key Vault management REST API)”, “Azure CLI release notes”).

Vault names are global. A deleted vault waits in `cloud.deleted_vaults` (its data in
`cloud.vault_data` stays until purge). Access-policy changes show in ARM at once and are recorded
in `cloud.access_policies` to take effect on the data plane after the propagation delay.
"""

from __future__ import annotations

import copy
import datetime as _dt
import re

from starlette.responses import Response

from ..hosts import VAULT_SUFFIX
from ..responses import iso, json_response
from ..state import Timed, arm_key
from .kinds import ArmError, Ctx, Kind, Registry, Tracked, resource_not_found
from .versions import normalize_location

NS = "Microsoft.KeyVault"
VAULT_TYPE = f"{NS}/vaults"
RBAC_DEFAULT_FROM = "2026-02-01"  # api-version from which new vaults default to RBAC (“Azure CLI release notes”)
PERMISSION_KINDS = ("keys", "secrets", "certificates", "storage")
_NAME_RE = re.compile(r"^[a-zA-Z](?!.*--)[a-zA-Z0-9-]{1,22}[a-zA-Z0-9]$")


_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


def check_policies(entries: list) -> None:
    """Every access policy names a tenant and an object by GUID, as ARM insists (the message
    is UNCONFIRMED; the code and status are what ARM gives for a malformed property)."""
    for i, entry in enumerate(entries):
        for key in ("tenantId", "objectId"):
            value = entry.get(key) if isinstance(entry, dict) else None
            if not isinstance(value, str) or not _GUID.match(value):
                raise ArmError(400, "BadRequest",
                               f"Invalid value found at accessPolicies[{i}].{key}: {value}")


def _policy(entry: dict) -> dict:
    """An access policy with all four permission lists present, as ARM returns them."""
    perms = entry.get("permissions") or {}
    out = {"tenantId": entry.get("tenantId"), "objectId": entry.get("objectId")}
    if entry.get("applicationId"):
        out["applicationId"] = entry["applicationId"]
    out["permissions"] = {k: list(perms.get(k) or []) for k in PERMISSION_KINDS}
    return out


def _policy_key(entry: dict) -> tuple[str, str, str]:
    return (str(entry.get("tenantId") or "").lower(), str(entry.get("objectId") or "").lower(),
            str(entry.get("applicationId") or "").lower())


def merge_policies(current: list[dict], change: list[dict], kind: str) -> list[dict]:
    """`add` unions permissions per principal, `remove` takes them away (dropping entries left
    empty), `replace` replaces the whole list (UNCONFIRMED: templates use it that way)."""
    if kind == "replace":
        return [_policy(p) for p in change]
    out = [_policy(p) for p in current]
    for entry in (_policy(p) for p in change):
        match = next((p for p in out if _policy_key(p) == _policy_key(entry)), None)
        if kind == "add":
            if match is None:
                out.append(entry)
                continue
            for k in PERMISSION_KINDS:
                have = {x.lower() for x in match["permissions"][k]}
                match["permissions"][k] += [x for x in entry["permissions"][k]
                                            if x.lower() not in have]
        elif match is not None:
            for k in PERMISSION_KINDS:
                gone = {x.lower() for x in entry["permissions"][k]}
                match["permissions"][k] = [x for x in match["permissions"][k]
                                           if x.lower() not in gone]
            if not any(match["permissions"].values()):
                out.remove(match)
    return out


def record_policies(ctx: Ctx, name: str, policies: list[dict]) -> None:
    """The data plane enforces access policies after the propagation delay (“Troubleshoot Azure RBAC”)."""
    ctx.cloud.access_policies.setdefault(name.lower(), Timed()).set(
        copy.deepcopy(policies), ctx.cloud.effective_time())


def _name_in_use(name: str) -> str:
    return (f"The vault name '{name}' is already in use. Vault names are globally unique so it is "
            "possible that the name is already taken. If you are sure that the vault name was not "
            "taken then it is possible that a vault with the same name was recently deleted but "
            "not purged after being placed in a recoverable state. If the vault is in a "
            "recoverable state then the vault will need to be purged before reusing the name. For "
            "more information about VaultAlreadyExists, soft delete and purging a vault follow "
            "this link https://go.microsoft.com/fwlink/?linkid=2147740.")


def _vault_elsewhere(ctx: Ctx, name: str, own_key: str) -> bool:
    return any(r["type"] == VAULT_TYPE and r["name"].lower() == name.lower() and k != own_key
               for k, r in ctx.cloud.resources.items())


class Vaults(Tracked):
    ns, types = NS, ("vaults",)

    def build(self, ctx: Ctx, body: dict, existing: dict | None) -> dict:
        out = self.base(ctx, body, existing)
        name = out["name"]
        props = body.get("properties") or {}
        old = (existing or {}).get("properties", {})
        if existing is None:
            self._check_new_name(ctx, name, props)
            deleted = ctx.cloud.deleted_vault_bodies.get(name.lower())
            if props.get("createMode") == "recover" and deleted is not None:
                old = deleted["properties"]  # recover brings the vault back as it was
        if old.get("enablePurgeProtection") and props.get("enablePurgeProtection") is False:
            raise ArmError(400, "BadRequest", "The property \"enablePurgeProtection\" cannot be "
                           "set to false. Enabling the purge protection for a vault is an "
                           "irreversible action.")
        if props.get("enableSoftDelete") is False:
            raise ArmError(400, "BadRequest", "The property \"enableSoftDelete\" has been set to "
                           "false. Enabling the 'soft delete' functionality is mandatory for all "
                           "key vaults.")
        retention = props.get("softDeleteRetentionInDays") or old.get(
            "softDeleteRetentionInDays") or 90
        if not isinstance(retention, int) or not 7 <= retention <= 90:
            raise ArmError(400, "BadRequest", "The property \"softDeleteRetentionInDays\" must be "
                           "between 7 and 90.")
        rbac_mode = props.get("enableRbacAuthorization")
        if rbac_mode is None:
            rbac_mode = old.get("enableRbacAuthorization",
                                ctx.api_version >= RBAC_DEFAULT_FROM)
        policies = props.get("accessPolicies")
        check_policies(policies or [])
        policies = [_policy(p) for p in (policies if policies is not None
                                         else old.get("accessPolicies", []))]

        def pick(key: str, default: object) -> object:
            value = props.get(key)
            return old.get(key, default) if value is None else value

        new_props = {
            "sku": props.get("sku") or old.get("sku") or {"family": "A", "name": "standard"},
            "tenantId": props.get("tenantId") or old.get("tenantId") or ctx.cloud.tenant_id,
            "accessPolicies": policies,
            "enabledForDeployment": pick("enabledForDeployment", False),
            "enabledForDiskEncryption": pick("enabledForDiskEncryption", False),
            "enabledForTemplateDeployment": pick("enabledForTemplateDeployment", False),
            "enableSoftDelete": True, "softDeleteRetentionInDays": int(retention),
            "enableRbacAuthorization": bool(rbac_mode),
            "vaultUri": f"https://{name}{VAULT_SUFFIX}/",
            "provisioningState": "Succeeded",
            "publicNetworkAccess": pick("publicNetworkAccess", "Enabled"),
        }
        if pick("enablePurgeProtection", None):
            new_props["enablePurgeProtection"] = True
        if pick("networkAcls", None):
            new_props["networkAcls"] = copy.deepcopy(pick("networkAcls", None))
        now = iso(ctx.cloud.now())
        created = (existing or {}).get("systemData", {})
        out["systemData"] = {
            "createdBy": created.get("createdBy", ctx.oid),
            "createdByType": created.get("createdByType", "Application"),
            "createdAt": created.get("createdAt", now),
            "lastModifiedBy": ctx.oid, "lastModifiedByType": "Application",
            "lastModifiedAt": now}
        out["properties"] = new_props
        return out

    def _check_new_name(self, ctx: Ctx, name: str, props: dict) -> None:
        if not _NAME_RE.match(name):
            raise ArmError(400, "VaultNameNotValid",
                           f"The vault name '{name}' is invalid. A vault's name must be between "
                           "3-24 alphanumeric characters. The name must begin with a letter, end "
                           "with a letter or digit, and not contain consecutive hyphens. Follow "
                           "this link for more information: "
                           "https://go.microsoft.com/fwlink/?linkid=2147742")
        if _vault_elsewhere(ctx, name, arm_key(ctx.resource_id())):
            raise ArmError(409, "VaultAlreadyExists", _name_in_use(name))
        deleted = name.lower() in ctx.cloud.deleted_vaults
        if deleted and props.get("createMode") != "recover":
            raise ArmError(409, "ConflictError",
                           "A vault with the same name already exists in deleted state. You need "
                           "to either recover or purge existing key vault. Follow this link "
                           "https://go.microsoft.com/fwlink/?linkid=2149745 for more information "
                           "on soft delete.")
        if not deleted and props.get("createMode") == "recover":
            # Code and text UNCONFIRMED.
            raise ArmError(404, "ResourceNotFound",
                           f"The vault '{name}' was not found in deleted state and cannot be "
                           "recovered.")

    def put(self, ctx: Ctx) -> Response:
        """"Vaults - Create Or Update" answers 200 whether the vault is new or not."""
        resp = super().put(ctx)
        resp.status_code = 200
        return resp

    def after_put(self, ctx: Ctx, res: dict, existing: dict | None) -> None:
        name = res["name"].lower()
        ctx.cloud.deleted_vaults.pop(name, None)
        ctx.cloud.deleted_vault_bodies.pop(name, None)
        policies = res["properties"]["accessPolicies"]
        if existing is None or existing["properties"]["accessPolicies"] != policies:
            record_policies(ctx, name, policies)

    def on_delete(self, ctx: Ctx, res: dict) -> None:
        """Soft delete: always on; the vault's data stays for a recover."""
        name, props = res["name"], res["properties"]
        sub = res["id"].split("/")[2]
        now = ctx.cloud.now()
        purge = now + _dt.timedelta(days=props["softDeleteRetentionInDays"]).total_seconds()
        ctx.cloud.deleted_vaults[name.lower()] = {
            "id": f"/subscriptions/{sub}/providers/{NS}/locations/{res['location']}/deletedVaults/"
                  f"{name}",
            "name": name, "type": f"{NS}/deletedVaults",
            "properties": {"vaultId": res["id"], "location": res["location"],
                           "deletionDate": iso(now), "scheduledPurgeDate": iso(purge),
                           "tags": res.get("tags", {}),
                           "purgeProtectionEnabled": bool(props.get("enablePurgeProtection"))},
        }
        ctx.cloud.deleted_vault_bodies[name.lower()] = copy.deepcopy(res)


VAULTS = Vaults()


class AccessPolicies(Kind):
    """`PUT …/vaults/{name}/accessPolicies/{add|replace|remove}`."""

    ns, types = NS, ("vaults", "accessPolicies")

    def put(self, ctx: Ctx) -> Response:
        kind = ctx.names[-1].lower()
        if kind not in ("add", "replace", "remove"):
            raise ArmError(400, "BadRequest", f"The operation kind '{ctx.names[-1]}' is invalid. "
                           "Supported values are 'add', 'replace' and 'remove'.")
        change = ((ctx.json().get("properties") or {}).get("accessPolicies")) or []
        check_policies(change)
        vctx = ctx.at_depth(1)
        with ctx.cloud.lock:
            vault = VAULTS.load(vctx)
            if vault is None:
                raise resource_not_found(vctx)
            vault = copy.deepcopy(vault)
            policies = merge_policies(vault["properties"]["accessPolicies"], change, kind)
            vault["properties"]["accessPolicies"] = policies
            VAULTS.store(vctx, vault)
            record_policies(ctx, vault["name"], policies)
        return json_response({"id": f"{vault['id']}/accessPolicies/{kind}", "name": kind,
                              "type": f"{VAULT_TYPE}/accessPolicies",
                              "location": vault["location"],
                              "properties": {"accessPolicies": [_policy(p) for p in change]}})


class VaultSecrets(Kind):
    """`GET …/vaults/{name}/secrets[/{secret}]` ("Secrets - List" and "Secrets - Get" of the
    Key Vault management REST API): the vault's secrets as ARM resources, with their attributes
    and URIs and never their values. An ARM read (`Microsoft.KeyVault/vaults/secrets/read`,
    which Reader's `*/read` grants), not a data-plane one: no access policy is needed. Deleted
    secrets are not listed; `$top` (at most 25) pages the list."""

    ns, types = NS, ("vaults", "secrets")

    def _vault(self, ctx: Ctx) -> dict:
        vctx = ctx.at_depth(1)
        vault = VAULTS.load(vctx)
        if vault is None:
            raise resource_not_found(vctx)
        return vault

    @staticmethod
    def _resource(vault: dict, secret) -> dict:
        latest = secret.latest
        attributes: dict = {"enabled": latest.enabled}
        if latest.nbf is not None:
            attributes["nbf"] = latest.nbf
        if latest.exp is not None:
            attributes["exp"] = latest.exp
        attributes.update({"created": latest.created, "updated": latest.updated})
        uri = f"{vault['properties']['vaultUri'].rstrip('/')}/secrets/{secret.name}"
        props: dict = {"attributes": attributes, "secretUri": uri,
                       "secretUriWithVersion": f"{uri}/{latest.version}"}
        if latest.content_type is not None:
            props["contentType"] = latest.content_type
        out = {"id": f"{vault['id']}/secrets/{secret.name}", "name": secret.name,
               "type": f"{VAULT_TYPE}/secrets", "location": vault["location"]}
        if latest.tags:
            out["tags"] = dict(latest.tags)
        out["properties"] = props
        return out

    def _secrets(self, ctx: Ctx, vault: dict) -> list:
        store = ctx.cloud.vault_data.get(vault["name"].lower())
        if store is None:
            return []
        store.expire(ctx.cloud.now())
        return sorted(store.secrets.values(), key=lambda s: s.name.lower())

    def get(self, ctx: Ctx) -> Response:
        with ctx.cloud.lock:
            vault = self._vault(ctx)
            found = next((s for s in self._secrets(ctx, vault)
                          if s.name.lower() == ctx.names[-1].lower()), None)
            if found is None:
                raise resource_not_found(ctx)
            return json_response(self._resource(vault, found))

    def list(self, ctx: Ctx) -> Response:
        top_text = ctx.q("$top")
        try:
            top = int(top_text) if top_text is not None else 25
        except ValueError:
            top = 0
        if not 1 <= top <= 25:
            # Code and text UNCONFIRMED: ARM's answer for a parameter out of its range.
            raise ArmError(400, "BadRequest", f"The value '{top_text}' of the query parameter "
                           "'$top' is invalid: it must be between 1 and 25.")
        try:
            skip = int(ctx.q("$skiptoken") or 0)
        except ValueError:
            skip = 0
        with ctx.cloud.lock:
            vault = self._vault(ctx)
            secrets = self._secrets(ctx, vault)
            items = [self._resource(vault, s) for s in secrets[skip:skip + top]]
        out: dict = {"value": items}
        if skip + top < len(secrets):
            from urllib.parse import urlencode

            params = [(k, v) for k, v in ctx.query_items if k.lower() != "$skiptoken"]
            params.append(("$skiptoken", str(skip + top)))
            out["nextLink"] = f"https://{ctx.host}{ctx.path}?{urlencode(params)}"
        return json_response(out)


class DeletedVaults(Kind):
    """`/subscriptions/{sub}/providers/Microsoft.KeyVault/deletedVaults` (list only)."""

    ns, types = NS, ("deletedVaults",)

    def list(self, ctx: Ctx) -> Response:
        prefix = f"/subscriptions/{ctx.sub}/".lower()
        with ctx.cloud.lock:
            items = [copy.deepcopy(v) for v in ctx.cloud.deleted_vaults.values()
                     if v["id"].lower().startswith(prefix)]
        return json_response({"value": items})


class DeletedVaultAt(Kind):
    """`…/locations/{loc}/deletedVaults/{name}` GET and `/purge`."""

    ns, types = NS, ("locations", "deletedVaults")
    actions = ("purge",)

    def _find(self, ctx: Ctx) -> dict:
        found = ctx.cloud.deleted_vaults.get(ctx.names[-1].lower())
        if found is None or found["properties"]["location"] != normalize_location(ctx.names[0]) or \
                not found["id"].lower().startswith(f"/subscriptions/{ctx.sub}/".lower()):
            raise ArmError(404, "ResourceNotFound",
                           f"The Resource '{NS}/locations/{ctx.names[0]}/deletedVaults/"
                           f"{ctx.names[-1]}' was not found.")
        return found

    def get(self, ctx: Ctx) -> Response:
        return json_response(self._find(ctx))

    def action(self, ctx: Ctx, verb: str) -> Response:
        with ctx.cloud.lock:
            found = self._find(ctx)
            name = found["name"].lower()
            if found["properties"]["purgeProtectionEnabled"]:
                # Code and text UNCONFIRMED.
                raise ArmError(409, "ConflictError", f"The vault '{found['name']}' has purge "
                               "protection enabled and cannot be purged before its scheduled "
                               "purge date.")
            ctx.cloud.deleted_vaults.pop(name, None)
            ctx.cloud.deleted_vault_bodies.pop(name, None)
            ctx.cloud.vault_data.pop(name, None)
            ctx.cloud.access_policies.pop(name, None)
        return Response(b"", 200)


class CheckNameAvailability(Kind):
    ns, types = NS, ("checkNameAvailability",)

    def rbac_action(self, ctx: Ctx, mode: str) -> str:
        return f"{NS}/checkNameAvailability/read"

    def post_collection(self, ctx: Ctx) -> Response:
        name = str(ctx.json().get("name") or "")
        if not _NAME_RE.match(name):
            return json_response({"nameAvailable": False, "reason": "AccountNameInvalid",
                                  "message": f"Vault name '{name}' is invalid."})
        if _vault_elsewhere(ctx, name, "") or name.lower() in ctx.cloud.deleted_vaults:
            return json_response({"nameAvailable": False, "reason": "AlreadyExists",
                                  "message": _name_in_use(name)})
        return json_response({"nameAvailable": True})


KINDS = (VAULTS, AccessPolicies(), VaultSecrets(), DeletedVaults(), DeletedVaultAt(),
         CheckNameAvailability())


def register(registry: Registry) -> None:
    """Add this provider's resource types to an ARM's registry (arm.PROVIDERS lists the order)."""
    for kind in KINDS:
        registry.add(kind)
