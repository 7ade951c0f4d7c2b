"""What the probe does inside the lab's VM, as the lab's own curl commands do."""

from __future__ import annotations

from pytest_milab import Probe, probe

MANAGEMENT = "https://management.azure.com/"
VAULT = "https://vault.azure.net"
ARM = "https://management.azure.com"
KV = "https://{vault}.vault.azure.net"
PERMISSIONS = "/providers/Microsoft.Authorization/permissions?api-version=2022-04-01"


def secret_part(name: str) -> str:
    return f"secret:{name}"


def build(spec) -> Probe:
    sp = [probe.secret(secret_part(n), f"{KV}/secrets/{n}?api-version=7.1", keep=n)
          for n in spec.sp_secret_names]
    return Probe([
        probe.imds("imds_instance", "/metadata/instance?api-version=2020-09-01"),
        # Signed by Azure for a nonce the grader makes: proves the probe ran in this VM now.
        probe.attested("attested"),
        # With --milab-evidence-audience: Entra-signed tokens for an audience that opens
        # nothing, as the VM's identity and as the stored service principal.
        probe.signed_token("evidence_token"),
        probe.imds("imds_tags", "/metadata/instance/compute/tagsList?api-version=2020-09-01"),
        probe.which("jq", "jq"),
        probe.which("az", "az"),
        probe.token("management_token", MANAGEMENT),
        probe.token("vault_token", VAULT),
        probe.http("permissions_subscription", ARM + "/subscriptions/{subscription}" + PERMISSIONS,
                   token=MANAGEMENT),
        probe.http("permissions_group", ARM + "{group_id}" + PERMISSIONS, token=MANAGEMENT),
        probe.http("list_group", ARM + "{group_id}/resources?api-version=2020-06-01",
                   token=MANAGEMENT),
        probe.http("vault_with_management_token",
                   KV + "/secrets/{spec.secret_name}?api-version=7.1", token=MANAGEMENT),
        probe.http("vault_list", KV + "/secrets?api-version=7.1", token=VAULT),
        probe.secret("secret_read", KV + "/secrets/{spec.secret_name}?api-version=7.1"),
        *sp,
        # The lab signs in with the credentials it stored (client credentials, as `az login
        # --service-principal` does); they never leave the VM.
        probe.http("sp_login", "https://login.microsoftonline.com/<stored:tenant-id>/oauth2/v2.0/"
                   "token", method="POST", form={
                       "grant_type": "client_credentials", "client_id": probe.stored("client-id"),
                       "client_secret": probe.stored("client-secret"),
                       "scope": "https://management.core.windows.net//.default"},
                   after=[p.name for p in sp]),
        probe.signed_token("sp_evidence_token", client_credentials={
            "tenant": probe.stored("tenant-id"), "client_id": probe.stored("client-id"),
            "client_secret": probe.stored("client-secret")}, after=[p.name for p in sp]),
        # With a temporary AZURE_CONFIG_DIR: the student's own CLI state is untouched.
        probe.command("az_login", ["az", "login", "--identity", "--output", "json"],
                      temp_env="AZURE_CONFIG_DIR", timeout="{deadline}",
                      env={"AZURE_CORE_COLLECT_TELEMETRY": "false",
                           "AZURE_CORE_NO_COLOR": "true", "AZURE_CORE_ONLY_SHOW_ERRORS": "true"}),
    ], fields=lambda lab: {"vault": spec.vault_name(lab.group_id)})
