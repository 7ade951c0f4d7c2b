"""Every host name the local Azure answers for, and the token audiences that name its services.

Defined here once; the wire (certificate, proxies), the front door's routing table, the token
checks and the services' own answers take them from here. The names are Azure's public ones
("Azure Resource Manager overview", "Microsoft identity platform endpoints", "Azure Key Vault
DNS suffixes", "Microsoft Graph service root endpoints", "Azure Instance Metadata Service",
"Azure Connected Machine agent: managed identity endpoint").
"""

from __future__ import annotations

# -- the services' hosts (HTTPS, through the forward proxy) ---------------------------------------
LOGIN_HOST = "login.microsoftonline.com"  # Entra ID (and its older alias below)
LOGIN_HOSTS = (LOGIN_HOST, "login.windows.net")
ARM_HOST = "management.azure.com"
GRAPH_HOST = "graph.microsoft.com"
VAULT_SUFFIX = ".vault.azure.net"  # a vault's data plane is https://{vault}.vault.azure.net
VAULT_HOSTS = ("*" + VAULT_SUFFIX,)

# Which service answers which hosts (the front door's routing table, faults' service names).
SERVICE_HOSTS: dict[str, tuple[str, ...]] = {
    "entra": LOGIN_HOSTS,
    "arm": (ARM_HOST,),
    "graph": (GRAPH_HOST,),
    "keyvault": VAULT_HOSTS,
}
EMULATED_HOSTS = (*LOGIN_HOSTS, ARM_HOST, GRAPH_HOST, *VAULT_HOSTS)

# Hosts a VM's shell may also reach: the Azure CLI installer's short link.
AKA_MS_HOST = "aka.ms"
VM_EXTRA_HOSTS = (AKA_MS_HOST,)
# The local Azure's own control endpoint (machines/control.py): the host's clients only, never a VM's.
CONTROL_HOST = "control.localazure.test"
CONTROL_HOSTS = (CONTROL_HOST,)

# -- plain HTTP inside machines -------------------------------------------------------------------
IMDS_HOST = "169.254.169.254"  # a VM's Instance Metadata Service
HIMDS_PORT = 40342  # an Arc machine's Hybrid IMDS, on the machine's own loopback
HIMDS_HOSTS = ("localhost", "127.0.0.1")
HIMDS_ENDPOINT = f"http://localhost:{HIMDS_PORT}"
HIMDS_IDENTITY_ENDPOINT = f"{HIMDS_ENDPOINT}/metadata/identity/oauth2/token"

# -- the tenant's domain --------------------------------------------------------------------------
TENANT_DOMAIN = "localazure.onmicrosoft.com"

# -- token audiences ("Microsoft identity platform access token claims reference") ---------------
ARM_ENDPOINT = f"https://{ARM_HOST}"
LOGIN_ENDPOINT = f"https://{LOGIN_HOST}"
GRAPH_ENDPOINT = f"https://{GRAPH_HOST}"
CLASSIC_MANAGEMENT = "https://management.core.windows.net/"  # ARM's older resource URI
MANAGEMENT_RESOURCES = (f"{ARM_ENDPOINT}/", ARM_ENDPOINT)
ARM_AUDIENCES = (
    CLASSIC_MANAGEMENT,
    CLASSIC_MANAGEMENT.rstrip("/"),
    *MANAGEMENT_RESOURCES,
)
VAULT_RESOURCE = "https://vault.azure.net"
VAULT_AUDIENCES = (VAULT_RESOURCE, f"{VAULT_RESOURCE}/")
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"  # Microsoft Graph's application id
GRAPH_AUDIENCES = (GRAPH_ENDPOINT, f"{GRAPH_ENDPOINT}/", GRAPH_APP_ID)
