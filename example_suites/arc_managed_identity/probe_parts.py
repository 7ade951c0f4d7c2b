"""What the probe does inside the Arc-enabled server, as the lab's curl commands do: every
token comes from HIMDS (localhost:40342), through Arc's key-file challenge."""

from __future__ import annotations

from pytest_milab import Probe, probe

MANAGEMENT = "https://management.azure.com/"
VAULT = "https://vault.azure.net"
ARM = "https://management.azure.com"
KV = "https://{vault}.vault.azure.net"
PERMISSIONS = "/providers/Microsoft.Authorization/permissions?api-version=2022-04-01"


def build(spec) -> Probe:
    return Probe([
        probe.token("management_token", MANAGEMENT, source="himds"),
        # With --milab-evidence-audience: an Entra-signed token for an audience that opens
        # nothing. (HIMDS documents no attested document, so there is none to ask for.)
        probe.signed_token("evidence_token", source="himds"),
        probe.http("permissions_subscription", ARM + "/subscriptions/{subscription}" + PERMISSIONS,
                   token=MANAGEMENT, source="himds"),
        probe.http("permissions_group", ARM + "{group_id}" + PERMISSIONS, token=MANAGEMENT,
                   source="himds"),
        probe.http("list_group", ARM + "{group_id}/resources?api-version=2021-04-01",
                   token=MANAGEMENT, source="himds"),
        probe.http("vault_with_management_token",
                   KV + "/secrets/{spec.secret_name}?api-version=7.4", token=MANAGEMENT,
                   source="himds"),
        probe.secret("secret_read", KV + "/secrets/{spec.secret_name}?api-version=7.4",
                     source="himds"),
    ], fields=lambda lab: {"vault": spec.vault_name(lab.group_id)})
