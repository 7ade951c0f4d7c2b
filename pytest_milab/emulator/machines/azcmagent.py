"""`azcmagent`, the Azure Connected Machine agent's command line, inside a local Azure machine.

Commands (public docs: "azcmagent connect", "azcmagent disconnect", "azcmagent show"):

    azcmagent connect --resource-group G --tenant-id T --location L --subscription-id S
                      (--service-principal-id ID --service-principal-secret SECRET
                       | --access-token TOKEN) [--resource-name NAME] [--tags k=v,...]
    azcmagent disconnect (--service-principal-id ID --service-principal-secret SECRET
                          | --access-token TOKEN | --force-local-only)
    azcmagent show [--json]

`connect` and `disconnect` need root (`sudo`). They talk to the local Azure's real endpoints
through the machine's egress proxy (Entra for a service principal's token, then ARM), so ARM's
RBAC decides: onboarding needs `Microsoft.HybridCompute/machines/write` (the "Azure Connected
Machine Onboarding" role, Contributor or Owner); disconnecting deletes the resource and so needs
`.../delete`. The agent's state lives in AZCMAGENT_STATE_DIR (the machine's /var/opt/azcmagent)
and its environment in AZCMAGENT_ETC_DIR/environment. Errors are one line and exit non-zero.
Standard library only: it runs with the machine's python3 in isolated mode.
"""

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

VERSION = "1.48.02881.1941"
API_VERSION = "2024-07-10"
# The endpoints come from the wrapper script arc.py writes (the names live in hosts.py).
ARM = os.environ.get("AZCMAGENT_ARM_ENDPOINT", "")
LOGIN = os.environ.get("AZCMAGENT_LOGIN_ENDPOINT", "")
_HIMDS = os.environ.get("AZCMAGENT_HIMDS_ENDPOINT", "")
ENDPOINT_LINES = (f"IDENTITY_ENDPOINT={_HIMDS}/metadata/identity/oauth2/token",
                  f"IMDS_ENDPOINT={_HIMDS}")
USAGE = """Azure Connected Machine Agent command line

Usage:
  azcmagent [command]

Available Commands:
  connect     Connects this machine to Azure
  disconnect  Disconnects this machine from Azure
  show        Gets machine metadata and agent status
  version     Displays the agent version
"""
FLAGS = {
    "connect": {"resource-group", "tenant-id", "location", "subscription-id", "resource-name",
                "service-principal-id", "service-principal-secret", "access-token", "tags",
                "cloud", "correlation-id"},
    "disconnect": {"service-principal-id", "service-principal-secret", "access-token",
                   "correlation-id"},
    "show": set(),
    "version": set(),
}
SWITCHES = {"json", "force-local-only", "verbose", "v", "help", "h"}


class Fatal(Exception):
    """A one-line error and the exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# -- arguments ------------------------------------------------------------------------------------
def parse(argv: list[str]) -> tuple[str, dict[str, str], set[str]]:
    if not argv:
        print(USAGE)
        raise SystemExit(0)
    command, rest = argv[0], argv[1:]
    if command not in FLAGS:
        raise Fatal(f'Error: unknown command "{command}" for "azcmagent"')
    flags: dict[str, str] = {}
    switches: set[str] = set()
    i = 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("-") or arg in ("-", "--"):
            raise Fatal(f'Error: unknown command "{arg}" for "azcmagent {command}"')
        name, eq, value = arg.lstrip("-").partition("=")
        if name in SWITCHES and not eq:
            switches.add(name)
        elif name in FLAGS[command]:
            if not eq:
                i += 1
                if i >= len(rest):
                    raise Fatal(f"Error: flag needs an argument: --{name}")
                value = rest[i]
            flags[name] = value
        else:
            raise Fatal(f"Error: unknown flag: --{name}")
        i += 1
    return command, flags, switches


def credentials_given(flags: dict[str, str]) -> None:
    sp = "service-principal-id" in flags or "service-principal-secret" in flags
    if sp and not (flags.get("service-principal-id") and flags.get("service-principal-secret")):
        raise Fatal("Error: --service-principal-id and --service-principal-secret must be "
                    "given together")
    if sp and flags.get("access-token"):
        raise Fatal("Error: use either a service principal or an access token, not both")
    if not sp and not flags.get("access-token"):
        # The real agent would fall back to an interactive or device code login.
        raise Fatal("FATAL   No credentials given: interactive login is not possible here; use "
                    "--service-principal-id/--service-principal-secret or --access-token")


def need_root() -> None:
    if not elevated():
        raise Fatal("FATAL   This command requires elevated privileges. Run it with sudo.")


def elevated() -> bool:
    """Root with its privileges (the machine's sessions are root without any capability)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    if int(line.split()[1], 16) != 0:
                        return True
    except OSError:
        pass
    return os.geteuid() != 0 and bool(os.environ.get("SUDO_USER"))


# -- state ------------------------------------------------------------------------------------------
def state_dir() -> str:
    return os.environ.get("AZCMAGENT_STATE_DIR") or "/var/opt/azcmagent"


def config_path() -> str:
    return os.path.join(state_dir(), "agentconfig.json")


def load_config() -> dict | None:
    try:
        with open(config_path()) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_config(config: dict | None) -> None:
    path = config_path()
    if config is None:
        if os.path.exists(path):
            os.remove(path)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(config, f, indent=2)
    owner = os.stat(os.path.dirname(path))
    if os.geteuid() == 0:  # the state belongs to the directory's owner, like the directory
        os.chown(tmp, owner.st_uid, owner.st_gid)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def set_environment(on: bool) -> None:
    """IDENTITY_ENDPOINT and IMDS_ENDPOINT in /etc/environment, for every new login."""
    path = os.path.join(os.environ.get("AZCMAGENT_ETC_DIR") or "/etc", "environment")
    try:
        with open(path) as f:
            lines = [ln for ln in f.read().splitlines()
                     if not ln.startswith(("IDENTITY_ENDPOINT=", "IMDS_ENDPOINT="))]
    except OSError:
        lines = []
    if on:
        lines += ENDPOINT_LINES
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))


def network_profile() -> dict:
    """The machine's addresses as the agent reports them (`hostname -I`), in ARM's shape."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10)
        addresses = out.stdout.split()
    except OSError:
        addresses = []
    ips = [{"address": a, "ipAddressVersion": "IPv6" if ":" in a else "IPv4"} for a in addresses]
    return {"networkInterfaces": [{"ipAddresses": ips}]} if ips else {"networkInterfaces": []}


def hostname() -> str:
    try:
        out = subprocess.run(["hostname"], capture_output=True, text=True, timeout=10)
        name = out.stdout.strip()
    except OSError:
        name = ""
    return name or os.uname().nodename


# -- HTTP -------------------------------------------------------------------------------------------
def request(method: str, url: str, *, token: str | None = None, body: dict | None = None,
            form: dict | None = None) -> tuple[int, dict]:
    headers = {"User-Agent": f"azcmagent/{VERSION}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    context = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or None)
    try:
        with urllib.request.urlopen(req, timeout=60, context=context) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise Fatal(f"FATAL   Could not reach {urllib.parse.urlsplit(url).hostname}: "
                    f"{getattr(exc, 'reason', exc)}") from None
    try:
        return status, json.loads(raw or b"{}")
    except ValueError:
        return status, {}


def access_token(flags: dict[str, str], tenant: str) -> str:
    if flags.get("access-token"):
        return flags["access-token"]
    status, body = request("POST", f"{LOGIN}/{tenant}/oauth2/v2.0/token", form={
        "grant_type": "client_credentials", "client_id": flags["service-principal-id"],
        "client_secret": flags["service-principal-secret"],
        "scope": f"{ARM}/.default"})
    if status != 200 or not body.get("access_token"):
        detail = str(body.get("error_description") or body.get("error") or status)
        raise Fatal("FATAL   AZCM0041: The credentials supplied are invalid: "
                    + detail.splitlines()[0])
    return body["access_token"]


def arm_failure(status: int, body: dict, doing: str) -> Fatal:
    error = body.get("error") or {}
    code = error.get("code") or str(status)
    message = str(error.get("message") or "").replace("\n", " ")
    prefix = "AZCM0042: " if status == 403 else ""
    return Fatal(f"FATAL   {prefix}Failed to {doing}: Code: {code} Message: {message}")


# -- commands ---------------------------------------------------------------------------------------
def connect(flags: dict[str, str]) -> int:
    missing = [f for f in ("resource-group", "tenant-id", "location", "subscription-id")
               if not flags.get(f)]
    if missing:
        raise Fatal("Error: required flag(s) " + ", ".join(f'"{m}"' for m in missing)
                    + " not set")
    credentials_given(flags)
    need_root()
    if load_config() is not None:
        raise Fatal("FATAL   This machine is already connected to Azure. Run 'azcmagent "
                    "disconnect' first.")
    name = flags.get("resource-name") or hostname()
    sub, group = flags["subscription-id"], flags["resource-group"]
    location = flags["location"].replace(" ", "").lower()
    correlation = flags.get("correlation-id") or str(uuid.uuid4())
    print("INFO    Connecting machine to Azure... This might take a few minutes.")
    token = access_token(flags, flags["tenant-id"])
    rid = (f"/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.HybridCompute/"
           f"machines/{name}")
    tags = dict(pair.split("=", 1) for pair in flags.get("tags", "").split(",") if "=" in pair)
    body = {"location": location, "identity": {"type": "SystemAssigned"},
            "properties": {"osProfile": {"computerName": name},
                           "clientPublicKey": uuid.uuid4().hex,
                           "agent": {"agentVersion": VERSION, "machineFqdn": name,
                                     "displayName": name, "osName": "linux",
                                     "osType": "linux", "osSku": "Ubuntu 22.04.4 LTS",
                                     "osVersion": "5.15.0-1057-generic", "dnsFqdn": name,
                                     "networkProfile": network_profile()}}}
    if tags:
        body["tags"] = tags
    print("INFO    Creating resource in Azure...  "
          f"Correlation ID={correlation} Resource ID={rid}")
    status, res = request("PUT", f"{ARM}{rid}?api-version={API_VERSION}", token=token, body=body)
    if status not in (200, 201):
        raise arm_failure(status, res, "create the resource in Azure")
    write_config({
        "resourceId": res.get("id", rid), "resourceName": res.get("name", name),
        "resourceGroup": group, "subscriptionId": sub, "tenantId": flags["tenant-id"],
        "location": location, "vmId": (res.get("properties") or {}).get("vmId"),
        "correlationId": correlation, "cloud": "AzureCloud",
        "connectedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    set_environment(True)
    print("INFO    Connected machine to Azure")
    print(f"INFO    Machine overview page: https://portal.azure.com/#@{flags['tenant-id']}"
          f"/resource{rid}/overview")
    return 0


def disconnect(flags: dict[str, str], switches: set[str]) -> int:
    if "force-local-only" not in switches:
        credentials_given(flags)
    need_root()
    config = load_config()
    if config is None:
        raise Fatal("FATAL   The machine is not connected to Azure.")
    print("INFO    Disconnecting the machine from Azure... This might take a few minutes.")
    if "force-local-only" not in switches:
        token = access_token(flags, config["tenantId"])
        status, body = request("DELETE", f"{ARM}{config['resourceId']}?api-version={API_VERSION}",
                               token=token)
        if status not in (200, 202, 204):
            raise arm_failure(status, body, "delete the resource from Azure")
        print(f"INFO    Deleted resource {config['resourceId']}")
    write_config(None)
    set_environment(False)
    print("INFO    Disconnected machine from Azure")
    return 0


def show(switches: set[str]) -> int:
    config = load_config() or {}
    status = "Connected" if config else "Disconnected"
    fields = [  # (text label, --json key, value)
        ("Resource Name", "resourceName", config.get("resourceName", "")),
        ("Resource Group Name", "resourceGroup", config.get("resourceGroup", "")),
        ("Resource Namespace", "resourceNamespace",
         "Microsoft.HybridCompute" if config else ""),
        ("Resource Id", "resourceId", config.get("resourceId", "")),
        ("Subscription ID", "subscriptionId", config.get("subscriptionId", "")),
        ("Tenant ID", "tenantId", config.get("tenantId", "")),
        ("VM ID", "vmId", config.get("vmId") or ""),
        ("Correlation ID", "correlationId", config.get("correlationId", "")),
        ("Location", "location", config.get("location", "")),
        ("Cloud", "cloud", config.get("cloud", "")),
        ("Agent Version", "agentVersion", VERSION),
        ("Agent Logfile", "agentLogfile", "/var/opt/azcmagent/log/himds.log"),
        ("Agent Status", "status", status),
    ]
    if "json" in switches:
        print(json.dumps({key: value for _, key, value in fields}, indent=2))
    else:
        for label, _, value in fields:
            print(f"{label:<40}: {value}")
    return 0


def main(argv: list[str]) -> int:
    try:
        command, flags, switches = parse(argv)
        if switches & {"help", "h"}:
            print(USAGE)
            return 0
        if command == "connect":
            return connect(flags)
        if command == "disconnect":
            return disconnect(flags, switches)
        if command == "version":
            print(f"azcmagent version {VERSION}")
            return 0
        return show(switches)
    except Fatal as exc:
        print(str(exc), file=sys.stderr)
        return exc.code
    except OSError as exc:
        print(f"FATAL   {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
