"""Azure's built-in role ids and the api-versions the engine reads with, written once.

Role ids are the same in every tenant ("Azure built-in roles" in the Azure RBAC
documentation); a suite names roles by name and the engine resolves them."""

from __future__ import annotations

ROLES: dict[str, str] = {
    "Owner": "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
    "Contributor": "b24988ac-6180-42a0-ab88-20f7382dd24c",
    "Reader": "acdd72a7-3385-48ef-bd42-f606fba81ae7",
    "User Access Administrator": "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Key Vault Secrets Officer": "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
    "Key Vault Administrator": "00482a5a-887f-4fb3-b363-3b7fe8e74483",
    "Azure Connected Machine Onboarding": "b64e21ea-ac4e-4cdf-9dc9-5b892992bee7",
    "Azure Connected Machine Resource Administrator": "cd570a14-e51a-42ad-bac8-bafd67325302",
}
ROLE_NAMES: dict[str, str] = {guid: name for name, guid in ROLES.items()}

# api-versions to read with, per resource provider: stable ones every ARM region (and the local
# Azure) serves. Suites read with these too (`pytest_milab.API`).
API = {
    "Microsoft.Resources": "2021-04-01",
    "Microsoft.KeyVault": "2023-07-01",
    "Microsoft.Compute": "2024-07-01",
    "Microsoft.Network": "2023-09-01",
    "Microsoft.Authorization": "2022-04-01",
    "Microsoft.HybridCompute": "2024-07-10",
    "subscriptions": "2022-12-01",
}


def role_name(role_definition_id: str) -> str:
    """The built-in role a role definition id names, else the id's last segment."""
    guid = str(role_definition_id or "").rsplit("/", 1)[-1].lower()
    return ROLE_NAMES.get(guid, guid)


def role_definition_id(subscription_id: str, role: str) -> str:
    """The full id of a built-in role (by name or guid) in a subscription."""
    guid = ROLES.get(role, role)
    return (f"/subscriptions/{subscription_id}/providers/Microsoft.Authorization/"
            f"roleDefinitions/{guid}")
