"""On-premises machines: SSH-reachable servers outside Azure that Azure Arc can onboard.

A machine belongs to no subscription. It has its own loopback address, the VMs' userland, an SSH
server for one admin user and the keys given, and an egress proxy to the local Azure; nothing
answers at 169.254.169.254 (connections there close unanswered, as no IMDS exists on-premises).

Inside, `sudo azcmagent connect ...` (azcmagent.py) onboards it through the local ARM, as the
Connected Machine agent does: the resource `Microsoft.HybridCompute/machines/<hostname>` with a
system-assigned identity, the agent's state under the machine's `/var/opt/azcmagent`, and
`IDENTITY_ENDPOINT`/`IMDS_ENDPOINT` in its `/etc/environment`. From then on the machine's Hybrid
Instance Metadata Service (HIMDS) answers on localhost:40342, reached through the machine's egress
proxy as a VM reaches IMDS. Its token endpoint follows the challenge of the public docs
"Authenticate against Azure resources with Azure Arc-enabled servers": the first request is
answered 401 with `WWW-Authenticate: Basic realm=<key file>`, a file under
/var/opt/azcmagent/tokens readable only by root and the `himds` group; the retried request with
`Authorization: Basic <file contents>` gets the token. Each key works once.

Privileges: commands over SSH run without any capability (when the emulator runs as root, their
bounding set is emptied), so the key file, owned by another account, is out of their reach;
`sudo` asks a broker in the emulator to run the command with full privileges, passing the
caller's stdin, stdout and stderr, as sudo on an Ubuntu cloud image does for its admin user
(until the control endpoint, control.py, takes that passwordless sudo away: then every `sudo`
asks for a password no SSH command can give).

A machine's `hostname -I` gives its address (or the one it has behind its site's NAT), which
`azcmagent connect` reports in the resource's read-only `properties.networkProfile`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import grp
import json
import logging
import os
import pwd
import secrets
import shlex
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import faults
from ..entra.tokens import KNOWN_RESOURCES, TokenIssuer
from ..hosts import (
    ARM_ENDPOINT,
    HIMDS_ENDPOINT,
    HIMDS_HOSTS,
    IMDS_HOST,
    LOGIN_ENDPOINT,
)
from ..responses import set_caller
from ..state import Cloud, arm_key
from ..wire.frontdoor import FrontDoor
from ..wire.network import (
    UNREACHABLE,
    VM_KEY_HEADER,
    HttpListener,
)
from . import topology, userland
from .imds import _as_text, _walk
from .vms import LiveVm

log = logging.getLogger(__name__)

# The directory azure-identity (and MSAL) insist the key file is in, on Linux.
TOKENS_DIR = Path("/var/opt/azcmagent/tokens")
AGENT_SCRIPT = Path(__file__).with_name("azcmagent.py")
SUDO_CLIENT = Path(__file__).with_name("arcsudo.py")
# api-versions HIMDS accepts (the ones the public docs and the SDKs send); UNCONFIRMED as a list.
HIMDS_VERSIONS = ("2019-08-15", "2019-11-01", "2020-06-01", "2021-02-01", "2021-12-13")
TOKEN_LIFETIME = 86399
PR_CAPBSET_DROP = 24
PENDING_KEYS_KEPT = 64  # unanswered challenges remembered per machine


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")).encode(), status_code=status,
                    media_type="application/json; charset=utf-8", headers=headers or {})


# -- privileges ----------------------------------------------------------------------------------
def _himds_account() -> tuple[int, int]:
    """(uid, gid) owning the key files: `nobody` standing in for the agent's own account, and the
    `himds` group when this host has one."""
    try:
        uid = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        uid = 65534
    try:
        gid = grp.getgrnam("himds").gr_gid
    except KeyError:
        try:
            gid = grp.getgrnam("nogroup").gr_gid
        except KeyError:
            gid = 65534
    return uid, gid


def _capability_dropper():
    """A preexec function that empties the capability bounding set (None when not root)."""
    if os.geteuid() != 0:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        last = 40
    prctl = libc.prctl

    def drop() -> None:
        for cap in range(last + 1):
            prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    return drop


def _exit_code(returncode: int) -> int:
    return returncode if returncode >= 0 else 128 - returncode


class SudoBroker:
    """Runs commands with full privileges for a machine's `sudo` (a SOCK_SEQPACKET unix socket).

    A request is one JSON message (argv, env, cwd) with the caller's fds 0-2 attached; the answer
    is the exit code. A caller that goes away takes its command down with it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind(str(path))
        os.chmod(path, 0o600)
        self.sock.listen(16)
        self._procs: set[subprocess.Popen] = set()
        self._closed = False
        # Into the machine's mount namespace (cwd), so root's changes stay in the machine.
        self.enter: Callable[[str], None] | None = None
        threading.Thread(target=self._accept, name="milab-arc-sudo", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            req = json.loads(msg)
            if len(fds) != 3:
                raise ValueError("sudo needs stdin, stdout and stderr")
            cwd, enter = req.get("cwd") or "/", self.enter
            proc = subprocess.Popen(req["argv"], stdin=fds[0], stdout=fds[1], stderr=fds[2],
                                    env=req["env"], cwd=cwd, start_new_session=True,
                                    preexec_fn=(lambda: enter(cwd)) if enter else None)
        except Exception as exc:  # a bad request or a command that cannot start
            with contextlib.suppress(OSError):
                conn.send(json.dumps({"error": str(exc)}).encode())
            conn.close()
            return
        finally:
            for fd in fds:
                os.close(fd)
        self._procs.add(proc)

        def watch() -> None:  # the client's end closing (killed, disconnected) ends the command
            with contextlib.suppress(OSError):
                conn.recv(1)
            if proc.poll() is None:
                _killpg(proc.pid)
        threading.Thread(target=watch, daemon=True).start()
        rc = proc.wait()
        self._procs.discard(proc)
        with contextlib.suppress(OSError):
            conn.send(json.dumps({"rc": _exit_code(rc)}).encode())
        conn.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for proc in list(self._procs):
            _killpg(proc.pid)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, 9)


def _sudo_script(bash: str, socket_path: Path) -> str:
    return f"""#!{bash}
# sudo on a local Azure on-premises machine: the command runs with full privileges (the broker
# in the emulator starts it), with this session's stdin, stdout and stderr.
{userland.SUDO_OPTIONS}if [ $# -eq 0 ]; then
  if [ -n "$login" ]; then set -- {bash} -i; else
    echo "usage: sudo [-u user] command" >&2
    exit 1
  fi
fi
export SUDO_USER="${{SUDO_USER:-$USER}}" USER=root LOGNAME=root
exec python3 -I {shlex.quote(str(SUDO_CLIENT))} {shlex.quote(str(socket_path))} "$@"
"""


def _no_sudo_script(bash: str, user: str) -> str:
    return f"""#!{bash}
# sudo on a local Azure on-premises machine whose admin user has no NOPASSWD rule: every use
# would ask for a password, which no SSH command can give.
echo "sudo: a password is required" >&2
exit 1
"""


def _agent_script(bash: str, state_dir: Path, etc_dir: Path) -> str:
    return f"""#!{bash}
# azcmagent, the Azure Connected Machine agent's command line (the local Azure's version).
export AZCMAGENT_STATE_DIR={shlex.quote(str(state_dir))}
export AZCMAGENT_ETC_DIR={shlex.quote(str(etc_dir))}
export AZCMAGENT_ARM_ENDPOINT={shlex.quote(ARM_ENDPOINT)}
export AZCMAGENT_LOGIN_ENDPOINT={shlex.quote(LOGIN_ENDPOINT)}
export AZCMAGENT_HIMDS_ENDPOINT={shlex.quote(HIMDS_ENDPOINT)}
exec python3 -I {shlex.quote(str(AGENT_SCRIPT))} "$@"
"""


def _hostname_script(bash: str, name: str, address: str) -> str:
    return f"""#!{bash}
# hostname on a local Azure on-premises machine: its name, and with -I its address (the one its
# SSH server listens on, or its site's address behind NAT; one network interface).
case "$1" in
  -I|--all-ip-addresses|-i|--ip-address) echo {shlex.quote(address)} ;;
  *) echo {shlex.quote(name)} ;;
esac
"""


# -- a machine -----------------------------------------------------------------------------------
class ArcMachine(LiveVm):
    """One on-premises machine: a LiveVm whose identity is its own rather than an ARM VM's."""

    def __init__(self, fleet: ArcFleet, name: str, *, user: str, public_keys: list[str],
                 address: str, site_address: str | None = None) -> None:
        super().__init__(fleet, f"machine:{name.lower()}", {"name": name})
        self.name = name
        # What the server itself sees as its address (`hostname -I`, so what its agent reports):
        # the address it listens on, unless it sits behind its site's NAT.
        self.site_address = site_address or address
        self.user = user
        self.public_keys = [k.strip() for k in public_keys if k and k.strip()]
        self.host_address = address
        self.etc = self.root / "etc"
        self.state_dir = self.root / "var" / "opt" / "azcmagent"
        self.broker: SudoBroker | None = None
        self.pending_keys: dict[str, Path] = {}  # secret -> key file, for one use each
        self.sudo_allowed = True  # the admin user may sudo without a password

    # -- what the machine is -------------------------------------------------------------------
    def agent_config(self) -> dict | None:
        """The agent's state after `azcmagent connect`, None when not connected."""
        try:
            return json.loads((self.state_dir / "agentconfig.json").read_text())
        except (OSError, ValueError):
            return None

    def resource_id(self) -> str | None:
        config = self.agent_config() or {}
        return config.get("resourceId") or None

    def arm(self) -> dict:
        """What faults match on: the machine's name and, once onboarded, its resource id."""
        return {"name": self.name, "id": self.resource_id() or ""}

    def resource(self) -> dict | None:
        """The machine's Microsoft.HybridCompute resource in ARM, if connected and present."""
        rid = self.resource_id()
        if not rid:
            return None
        with self.fleet.cloud.lock:
            return self.fleet.cloud.resources.get(arm_key(rid))

    @property
    def admin_username(self) -> str:
        return self.user

    def authorized_keys(self) -> list[str]:
        return list(self.public_keys)

    def himds_up(self) -> bool:
        return (self.proxy is not None and self.agent_config() is not None
                and not self.fleet.cloud.knobs.faults.himds_is_down(self.arm()))

    def environment(self) -> dict[str, str]:
        """The VM environment plus /etc/environment, as pam_env gives every SSH session."""
        env = super().environment()
        try:
            lines = (self.etc / "environment").read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            name, sep, value = line.strip().partition("=")
            if sep and name and not name.startswith("#"):
                env[name] = value.strip().strip('"')
        return env

    def _in_namespace(self, argv: list[str]) -> list[str]:
        return argv  # entered in preexec, before the privileges go (nsenter could not then)

    def _spawn_options(self, *, tty: int | None) -> dict:
        options = super()._spawn_options(tty=tty)
        drop = self.fleet.drop_privileges
        held, home = self.namespace, str(self.home)
        if drop is not None or held is not None:
            first = options.get("preexec_fn")

            def preexec() -> None:
                if held is not None:
                    held.enter(home)
                if first is not None:
                    first()
                if drop is not None:
                    drop()
            options["preexec_fn"] = preexec
        return options

    def spawned(self) -> set[int]:
        procs = set(self.broker._procs) if self.broker is not None else set()
        return super().spawned() | {proc.pid for proc in procs}

    # -- power ------------------------------------------------------------------------------------
    async def power_on(self) -> None:
        await super().power_on()
        bash = userland.host_tool("bash") or "/bin/bash"
        self.etc.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.etc / "environment").touch()
        if os.geteuid() == 0:
            # Root's files here belong to another account, so the sessions (root without
            # privileges) can read but not change the agent's state or /etc/environment.
            uid, gid = _himds_account()
            for path in (self.etc, self.etc / "environment", self.state_dir):
                os.chown(path, uid, gid)
                os.chmod(path, 0o755 if path.is_dir() else 0o644)
        run = self.root / "run"
        run.mkdir(exist_ok=True)
        if self.broker is None:
            self.broker = SudoBroker(run / "sudo.sock")
        held = self.namespace
        self.broker.enter = (lambda cwd: held.enter(cwd)) if held is not None else None
        self._write_sudo()
        userland._write_script(self.bin / "azcmagent",
                               _agent_script(bash, self.state_dir, self.etc))
        userland._write_script(self.bin / "hostname",
                               _hostname_script(bash, self.name, self.site_address))

    def _write_sudo(self) -> None:
        bash = userland.host_tool("bash") or "/bin/bash"
        text = _sudo_script(bash, self.broker.path) if self.sudo_allowed else \
            _no_sudo_script(bash, self.user)
        userland._write_script(self.bin / "sudo", text)

    def set_sudo(self, allowed: bool) -> None:
        """Whether the admin user may sudo without a password (an Ubuntu cloud image's
        NOPASSWD rule), as an administrator editing /etc/sudoers.d would decide."""
        self.sudo_allowed = allowed
        if self.broker is not None:
            self._write_sudo()

    def _plain_http(self, host: str) -> tuple[int, dict[str, str]] | None:
        if host == IMDS_HOST:
            return UNREACHABLE  # no Azure host under this machine
        if host.lower() in HIMDS_HOSTS:
            if not self.himds_up():
                return UNREACHABLE  # the agent is not connected, or HIMDS is stopped
            return self.fleet.himds_port, {VM_KEY_HEADER: self.imds_key}
        return None

    async def power_off(self) -> None:
        await super().power_off()
        if self.broker is not None:
            self.broker.close()
            self.broker = None
        for path in self.pending_keys.values():
            with contextlib.suppress(OSError):
                path.unlink()
        self.pending_keys.clear()


# -- HIMDS ---------------------------------------------------------------------------------------
class Himds:
    """The Hybrid Instance Metadata Service of every machine (one app; the proxy-stamped key
    says which machine asks)."""

    def __init__(self, fleet: ArcFleet) -> None:
        self.fleet = fleet
        self.cloud = fleet.cloud
        self.tokens = fleet.tokens

    def app(self) -> Starlette:
        methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        return Starlette(routes=[Route("/{path:path}", self.dispatch, methods=methods)])

    async def dispatch(self, request: Request) -> Response:
        machine = self.fleet.machine_for_key(request.headers.get(VM_KEY_HEADER) or "")
        if machine is None or machine.agent_config() is None:
            return _json({"error": "forbidden", "error_description":
                          "HIMDS answers only requests made on a connected machine"}, 403)
        path = "/" + request.path_params["path"].strip("/")
        if request.method != "GET":
            return _json({"error": "method_not_allowed"}, 405)
        identity = path.startswith("/metadata/identity")
        if request.headers.get("metadata", "").lower() != "true":
            return _json({"error": "invalid_request",
                          "error_description": "Required metadata header not specified"}
                         if identity else
                         {"error": "Bad request. Required metadata header not specified"}, 400)
        version = request.query_params.get("api-version", "")
        if version not in HIMDS_VERSIONS:
            return _json({"error": "invalid_request", "error_description":
                          "api-version is invalid or was not specified in the request",
                          "newest-versions": list(reversed(HIMDS_VERSIONS))}, 400)
        if path == "/metadata/identity/oauth2/token":
            return self._token(request, machine)
        if path == "/metadata/instance" or path.startswith("/metadata/instance/"):
            return self._instance(request, machine, path)
        return _json({"error": "Not found"}, 404)

    # -- instance metadata ------------------------------------------------------------------------
    def _instance(self, request: Request, machine: ArcMachine, path: str) -> Response:
        res = machine.resource()
        if res is None:
            return _json({"error": "Not found"}, 404)
        rid = res["id"]
        parts = rid.split("/")
        tags = res.get("tags") or {}
        doc = {"compute": {
            "azEnvironment": "AzurePublicCloud",
            "location": res.get("location", ""),
            "name": res.get("name", ""),
            "osType": "Linux",
            "provider": "Microsoft.HybridCompute",
            "resourceGroupName": parts[4] if len(parts) > 4 else "",
            "resourceId": rid,
            "subscriptionId": parts[2] if len(parts) > 2 else "",
            "tags": ";".join(f"{k}:{v}" for k, v in sorted(tags.items())),
            "tagsList": [{"name": k, "value": str(v)} for k, v in sorted(tags.items())],
            "vmId": str(topology.props(res).get("vmId", "")),
        }, "network": {"interface": []}}
        try:
            node = _walk(doc, [p for p in path[len("/metadata/instance"):].split("/") if p])
        except KeyError:
            return _json({"error": "Not found"}, 404)
        if request.query_params.get("format") == "text":
            return Response(_as_text(node).encode(), media_type="text/plain; charset=utf-8")
        return _json(node)

    # -- tokens -----------------------------------------------------------------------------------
    def _challenge(self, machine: ArcMachine) -> Response:
        path = self.fleet.write_key(machine)
        return _json({"error": "unauthorized", "error_description":
                      "Use the key in the file named by WWW-Authenticate"}, 401,
                     {"WWW-Authenticate": f"Basic realm={path}"})

    def _token(self, request: Request, machine: ArcMachine) -> Response:
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if not auth:
            return self._challenge(machine)
        path = machine.pending_keys.pop(given.strip(), None) \
            if scheme.lower() == "basic" and given.strip() else None
        if path is None:
            # A wrong, made-up or already used key: refused; a new challenge is offered.
            return self._challenge(machine)
        with contextlib.suppress(OSError):
            path.unlink()
        resource = request.query_params.get("resource")
        if not resource:
            return _json({"error": "invalid_request",
                          "error_description": "Required audience parameter not specified"}, 400)
        if resource not in KNOWN_RESOURCES and self.cloud.resource_application(resource) is None:
            return _json({"error": "invalid_resource", "error_description":
                          f"AADSTS500011: The resource principal named {resource} was not found "
                          f"in the tenant named {self.cloud.tenant_id}."}, 400)
        res = machine.resource()
        principal = ((res or {}).get("identity") or {}).get("principalId")
        sp = self.cloud.principal(principal) if principal else None
        if sp is None:
            return _json({"error": "invalid_request",
                          "error_description": "Identity not found"}, 400)
        token = self.tokens.issue(aud=faults.token_audience(self.cloud.knobs, resource),
                                  oid=sp.object_id, appid=sp.app_id, appidacr="2",
                                  lifetime=TOKEN_LIFETIME,
                                  extra={"xms_mirid": topology.mirid(res["id"])})
        set_caller(request, sp.object_id)
        remaining = str(max(token.expires_on - int(self.cloud.now()), 0))
        return _json({"access_token": token.value, "expires_in": remaining,
                      "expires_on": str(token.expires_on), "ext_expires_in": remaining,
                      "not_before": str(token.claims["nbf"]), "resource": resource,
                      "token_type": "Bearer"})


# -- the fleet -----------------------------------------------------------------------------------
class ArcFleet:
    """Every on-premises machine of one local Azure, and the HIMDS they share."""

    def __init__(self, cloud: Cloud, tokens: TokenIssuer, *, workdir: Path, ca_path: Path,
                 tls_port: int, ssh_port: int, az_cli: Path | None = None) -> None:
        self.cloud = cloud
        self.tokens = tokens
        self.workdir = workdir
        self.ca_path = ca_path
        self.tls_port = tls_port
        self.ssh_port = ssh_port
        self.az_cli = az_cli
        self.ssh_connections = 0
        self.machines: dict[str, ArcMachine] = {}  # name (lower) -> machine
        self.himds = Himds(self)
        self.himds_port = 0
        self.egress_dir: Path | None = None  # where each machine's egress is published
        self.tls_tunnel = None  # serves an egress proxy's tunnel in-process (LocalAzure)
        self.drop_privileges = _capability_dropper()
        self.tokens_dir = TOKENS_DIR
        self._listener: HttpListener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._listener = HttpListener(FrontDoor(self.cloud, {"*": ("himds", self.himds.app())}))
        await self._listener.start()
        self.himds_port = self._listener.port
        self.cloud.arc_status = self.status
        self.cloud.knobs.faults.subscribe(self._faults_changed)
        try:
            TOKENS_DIR.mkdir(parents=True, exist_ok=True)
            usable = os.access(TOKENS_DIR, os.W_OK)
        except OSError:
            usable = False
        if not usable:  # not root: curl's two steps still work, azure-identity will refuse
            self.tokens_dir = self.workdir / "tokens"
            log.warning("local Azure: %s is not writable; HIMDS key files go to %s",
                        TOKENS_DIR, self.tokens_dir)

    async def stop(self) -> None:
        self.cloud.knobs.faults.unsubscribe(self._faults_changed)
        self.cloud.arc_status = None
        for machine in list(self.machines.values()):
            with contextlib.suppress(Exception):
                await machine.power_off()
        self.machines.clear()
        if self._listener is not None:
            await self._listener.stop()

    async def add(self, name: str, *, user: str, public_keys: list[str],
                  site_address: str | None = None) -> ArcMachine:
        if name.lower() in self.machines:
            raise ValueError(f"there is already a machine named {name!r}")
        address = self.cloud.allocate_ip()
        machine = ArcMachine(self, name, user=user, public_keys=public_keys, address=address,
                             site_address=site_address)
        await machine.power_on()
        self.machines[name.lower()] = machine
        await self._listen(machine)
        return machine

    async def remove(self, name: str) -> None:
        machine = self.machines.pop(name.lower(), None)
        if machine is None:
            raise KeyError(f"no machine named {name!r}")
        await machine.power_off()
        shutil.rmtree(machine.root, ignore_errors=True)

    def live(self, name: str) -> ArcMachine | None:
        return self.machines.get(name.lower())

    async def _listen(self, machine: ArcMachine) -> None:
        refused_for = self.cloud.knobs.faults.ssh_refused_for(machine.arm())
        if refused_for:
            self._loop.call_later(refused_for, self._relisten)
        await machine.set_listening(None if refused_for else machine.host_address)

    def _relisten(self) -> None:
        for machine in list(self.machines.values()):
            asyncio.ensure_future(self._listen(machine))

    def _faults_changed(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._relisten)

    # -- lookups ------------------------------------------------------------------------------------
    def machine_for_key(self, key: str) -> ArcMachine | None:
        for machine in self.machines.values():
            if key and secrets.compare_digest(machine.imds_key, key):
                return machine
        return None

    def status(self, resource: dict) -> str:
        """ARM's `properties.status` of a Microsoft.HybridCompute machine."""
        key = arm_key(str(resource.get("id", "")))
        vm_id = str(topology.props(resource).get("vmId", ""))
        for machine in list(self.machines.values()):
            config = machine.agent_config() or {}
            if arm_key(str(config.get("resourceId", ""))) == key and machine.himds_up() \
                    and config.get("vmId") in (None, vm_id):
                return "Connected"
        return "Disconnected"

    # -- key files --------------------------------------------------------------------------------
    def write_key(self, machine: ArcMachine) -> Path:
        """A new single-use key in the tokens directory, readable by root and `himds` only."""
        directory = self.tokens_dir
        directory.mkdir(parents=True, exist_ok=True)
        uid, gid = _himds_account()
        if os.geteuid() == 0:
            os.chown(directory, uid, gid)
            os.chmod(directory, 0o751)  # others may reach a file they know, not list or read
        secret = secrets.token_hex(32)
        path = directory / f"{uuid.uuid4()}.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            if os.geteuid() == 0:
                os.fchown(fd, uid, gid)
            os.write(fd, secret.encode())
        finally:
            os.close(fd)
        if len(machine.pending_keys) >= PENDING_KEYS_KEPT:  # the oldest unanswered one goes
            oldest = next(iter(machine.pending_keys))
            with contextlib.suppress(OSError):
                machine.pending_keys.pop(oldest).unlink()
        machine.pending_keys[secret] = path
        return path

