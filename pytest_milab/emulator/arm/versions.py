"""The api-versions and locations the local ARM knows, per resource provider.

Each list holds what the installed SDKs send (azure-mgmt-resource 26, -keyvault 14.1, -compute 39,
-network 33.1, -authorization 4.0, -msi 7.1, -subscription 3.1.1, -hybridcompute 9), what the Azure CLI sends (its
AAZ commands, its multi-api SDKs and the literal versions of its ARM templates, e.g.
Microsoft.Network 2015-06-15 in `az vm create`'s), and the older stable versions the published
REST API specs list. tests/emulator/test_api_versions.py reads the installed packages' sources and
checks that every version they send for an emulated type is here. Newest first: ARM prints them
in that order in InvalidApiVersionParameter.
"""

from __future__ import annotations

from .regions import LOCATION_NAMES as REGION_NAMES
from .regions import LOCATIONS as REGIONS

# Microsoft.Resources: resource groups, resources lists, providers. keyvault's vaults.list
# still lists through `/subscriptions/{sub}/resources?api-version=2015-11-01`.
RESOURCES = (
    "2025-04-01", "2025-03-01", "2024-11-01", "2024-07-01", "2024-03-01", "2023-07-01", "2022-09-01",
    "2021-04-01", "2021-01-01", "2020-10-01", "2020-08-01", "2020-06-01", "2019-10-01",
    "2019-08-01", "2019-07-01", "2019-05-10", "2019-05-01", "2019-03-01", "2018-05-01",
    "2018-02-01", "2017-05-10", "2016-09-01", "2016-07-01", "2016-02-01", "2015-11-01",
    "2015-01-01", "2014-04-01",
)

# `/subscriptions`, `/subscriptions/{id}`, `/tenants`, `/subscriptions/{id}/locations`.
SUBSCRIPTIONS = (
    "2022-12-01", "2021-10-01", "2021-01-01", "2020-01-01", "2019-11-01", "2019-06-01",
    "2018-06-01", "2016-06-01", "2015-01-01",
) + RESOURCES

_COMPUTE = (
    "2026-04-01", "2026-03-03", "2026-03-02", "2025-11-01", "2025-04-01", "2025-01-02",
    "2024-11-01", "2024-07-01", "2024-03-02", "2024-03-01", "2023-10-02", "2023-09-01",
    "2023-07-01", "2023-04-02", "2023-03-01", "2023-01-02", "2022-11-01", "2022-08-01",
    "2022-07-02", "2022-03-02", "2022-03-01", "2021-12-01", "2021-11-01", "2021-08-01",
    "2021-07-01", "2021-04-01", "2021-03-01", "2020-12-01", "2020-09-30", "2020-06-30",
    "2020-06-01", "2020-05-01", "2019-12-01", "2019-11-01", "2019-07-01", "2019-03-01",
    "2018-10-01", "2018-09-30", "2018-06-01", "2018-04-01", "2017-12-01", "2017-03-30",
    "2016-04-30-preview", "2016-03-30", "2015-06-15",
)

_NETWORK = (
    "2026-03-01", "2025-09-01", "2025-07-01", "2025-05-01", "2025-03-01", "2025-01-01", "2024-10-01",
    "2024-07-01", "2024-05-01", "2024-03-01", "2024-01-01", "2023-11-01", "2023-09-01",
    "2023-06-01", "2023-05-01", "2023-04-01", "2023-02-01", "2022-11-01", "2022-09-01",
    "2022-07-01", "2022-05-01", "2022-01-01", "2021-08-01", "2021-05-01", "2021-03-01",
    "2021-02-01", "2020-11-01", "2020-08-01", "2020-07-01", "2020-06-01", "2020-05-01",
    "2020-04-01", "2020-03-01", "2019-12-01", "2019-11-01", "2019-09-01", "2019-08-01",
    "2019-06-01", "2019-04-01", "2019-02-01", "2018-12-01", "2018-11-01", "2018-10-01",
    "2018-08-01", "2018-07-01", "2018-06-01", "2018-04-01", "2018-02-01", "2018-01-01",
    "2017-11-01", "2017-10-01", "2017-09-01", "2017-08-01", "2017-06-01", "2017-04-01",
    "2017-03-01", "2016-12-01", "2016-11-01", "2016-10-01", "2016-09-01", "2016-08-01",
    "2016-07-01", "2016-06-01", "2016-03-30", "2015-06-15", "2015-05-01-preview",
)

_KEYVAULT = (
    "2026-05-15", "2026-02-01", "2025-05-01", "2024-12-01-preview", "2024-11-01",
    "2024-04-01-preview", "2023-08-01-preview", "2023-07-01", "2023-02-01", "2022-11-01",
    "2022-07-01", "2022-02-01-preview", "2021-11-01-preview", "2021-10-01", "2021-06-01-preview",
    "2021-04-01-preview", "2020-04-01-preview", "2019-09-01", "2018-02-14", "2016-10-01",
    "2015-06-01",
)

_MANAGED_IDENTITY = (
    "2025-05-31-preview", "2025-01-31-preview", "2024-11-30", "2023-07-31-preview", "2023-01-31", "2022-01-31-preview", "2021-09-30-preview",
    "2018-11-30", "2015-08-31-preview",
)

# Microsoft.HybridCompute's stable versions (the REST API specs' stable folders); previews are
# left out.
_HYBRID_COMPUTE = (
    "2025-01-13", "2024-07-10", "2022-12-27", "2021-05-20", "2020-08-02", "2019-12-12",
)

_ROLE_ASSIGNMENTS = (
    "2022-04-01", "2022-01-01-preview", "2020-10-01-preview", "2020-08-01-preview",
    "2020-04-01-preview", "2020-03-01-preview", "2018-09-01-preview", "2018-01-01-preview",
    "2017-10-01-preview", "2015-07-01",
)
_ROLE_DEFINITIONS = ("2022-05-01-preview", "2022-04-01", "2018-01-01-preview", "2015-07-01")
_PERMISSIONS = ("2022-05-01-preview", "2022-04-01", "2018-01-01-preview", "2015-07-01")

# namespace (lower) -> first type segment (lower, or "" for the whole namespace) -> versions
PROVIDERS: dict[str, dict[str, tuple[str, ...]]] = {
    "microsoft.compute": {"": _COMPUTE},
    "microsoft.network": {"": _NETWORK},
    "microsoft.keyvault": {"": _KEYVAULT},
    "microsoft.managedidentity": {"": _MANAGED_IDENTITY},
    "microsoft.hybridcompute": {"": _HYBRID_COMPUTE},
    "microsoft.authorization": {"roleassignments": _ROLE_ASSIGNMENTS,
                                "roledefinitions": _ROLE_DEFINITIONS,
                                "permissions": _PERMISSIONS},
    "microsoft.resources": {"": RESOURCES},
}


def provider_versions(namespace: str, first_type: str = "") -> tuple[str, ...]:
    table = PROVIDERS.get(namespace.lower(), {})
    return table.get(first_type.lower()) or table.get("", ())


# Every public region (regions.py); re-exported here for the modules that import them.
LOCATIONS, LOCATION_NAMES = REGIONS, REGION_NAMES


def normalize_location(value: str) -> str:
    """ARM stores `UK South` as `uksouth`."""
    return value.replace(" ", "").lower()
