"""`LocalAzure`: start the local Azure in a background thread and hand out what reaches it."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import eventloop, keyvault, rbac
from .arm import app as arm
from .entra import graph, login, users
from .entra.tokens import TokenIssuer
from .faults import LATENCY_SERVICES, Quirks
from .files import write_private
from .hosts import AKA_MS_HOST, CONTROL_HOSTS, EMULATED_HOSTS, SERVICE_HOSTS, TENANT_DOMAIN
from .machines import control, userland
from .machines.arc import ArcFleet
from .machines.attested import SIGNER_NAMES as ATTESTATION_SIGNER
from .machines.attested import AttestationSigner
from .machines.vms import VmFleet
from .state import Cloud, Knobs
from .wire.frontdoor import FrontDoor
from .wire.network import (
    CertificateAuthority,
    ForwardProxy,
    HttpListener,
)


@dataclass(frozen=True)
class UserIdentity:
    """An Entra user of the local tenant and its password (`az login -u UPN -p PASSWORD`)."""

    tenant_id: str
    user_principal_name: str
    password: str
    object_id: str


@dataclass(frozen=True)
class Identity:
    """A service principal of the local tenant, with the secret that signs it in."""

    tenant_id: str
    client_id: str
    client_secret: str
    object_id: str


@dataclass(frozen=True)
class Machine:
    """An on-premises machine: where SSH reaches it and who may log in."""

    name: str
    address: str
    port: int
    user: str


_RUNNING: set[LocalAzure] = set()  # started and not yet stopped, for the exit paths below
_HOOKED: list[bool] = []


def _stop_all() -> None:
    for azure in list(_RUNNING):
        with contextlib.suppress(Exception):
            azure.stop()


def _on_sigterm(signum, frame) -> None:
    """SIGTERM: stop every local Azure of this process (its VMs' processes ended, its work
    directory removed), then do what SIGTERM did before (by default: end the process)."""
    _stop_all()
    previous = _HOOKED_PREVIOUS[0] if _HOOKED_PREVIOUS else signal.SIG_DFL
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


_HOOKED_PREVIOUS: list = []


def _hook_exit_paths() -> None:
    """Once per process: a local Azure left running is stopped at exit (Ctrl-C's
    KeyboardInterrupt ends the interpreter through atexit) and on SIGTERM (when started from
    the main thread, where Python lets signal handlers be set)."""
    if _HOOKED:
        return
    _HOOKED.append(True)
    atexit.register(_stop_all)
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError, OSError):
            _HOOKED_PREVIOUS.append(signal.getsignal(signal.SIGTERM))
            signal.signal(signal.SIGTERM, _on_sigterm)


class LocalAzure:
    """A local Azure for tests and demos.

    >>> with LocalAzure(latency={"arm": 0.08}, throttle=True) as azure:
    ...     os.environ.update(azure.env)   # or run a subprocess with env=azure.env

    Behaviour knobs (all off by default), given here or changed at run time on `azure.knobs`:

    - `propagation_delay`: seconds before role assignments and access policies take effect.
    - `knobs.lro_delay`: seconds a long-running ARM operation (a template deployment, a network
      or compute PUT) stays in progress; 0.05 by default, 0 ends them at once.
    - `latency`: seconds added per service: arm, keyvault, entra, graph, imds, himds (an Arc
      machine's metadata service), aka.ms, and ssh_handshake (before a VM's or machine's SSH
      server accepts a login).
    - `throttle`: ARM token buckets per (caller, subscription), refusing with 429 and
      Retry-After; sizes in `knobs.arm_read_bucket`/`arm_read_refill` (250, 25/s) and
      `knobs.arm_write_bucket`/`arm_write_refill` (200, 10/s).
    - `quirks`: names from `faults.QUIRKS`, Azure answering wrongly on purpose.
    - `knobs.faults`: transient trouble switched from Python: `error_burst(service, status,
      count, path=)`, `reset_connections(count, proxy=, host=)`, `ssh_refuse(seconds, vm=)`
      (a machine's name works too), `hang_commands(vm, seconds, count=)`,
      `himds_down(seconds, machine=)`, `clear()`.
    - `knobs.reset()` turns every knob back to its default.
    """

    def __init__(self, *, propagation_delay: float = 0.0, workdir: str | Path | None = None,
                 az_cli: str | Path | None = None, ssh_port: int | None = None,
                 tenant_id: str | None = None, latency: dict[str, float] | None = None,
                 throttle: bool = False, quirks: tuple[str, ...] | list[str] = ()) -> None:
        unknown = set(latency or {}) - set(LATENCY_SERVICES)
        if unknown:
            raise ValueError(f"no latency knob for {', '.join(sorted(unknown))}; "
                             f"services: {', '.join(LATENCY_SERVICES)}")
        eventloop.choice()  # MILAB_EMULATOR_LOOP names a loop (ValueError otherwise)
        self.knobs = Knobs(propagation_delay=propagation_delay, latency=dict(latency or {}),
                           throttle=throttle, quirks=Quirks(quirks))
        self.cloud = Cloud(tenant_id=tenant_id, knobs=self.knobs)
        self.az_cli = Path(az_cli) if az_cli else (
            Path(os.environ["MILAB_AZ_CLI"]) if os.environ.get("MILAB_AZ_CLI") else None)
        self.ssh_port = ssh_port
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="milab-azure-"))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closers: list = []
        self.started_in: float | None = None
        self.operator_user: UserIdentity | None = None  # make_operator_user

    # -- public handles -------------------------------------------------------------------------
    @property
    def audit(self):
        return self.cloud.audit

    @property
    def arm_requests(self) -> int:
        """How many requests ARM has answered (429s and injected faults included)."""
        return sum(1 for entry in self.cloud.audit if entry.service == "arm")

    def stats(self) -> dict:
        """Counts so far: requests per service, ARM requests per caller and throttled (429),
        and SSH connections accepted by the VMs."""
        services: dict[str, int] = {}
        arm_by_caller: dict[str, int] = {}
        throttled = 0
        for entry in self.cloud.audit:
            services[entry.service] = services.get(entry.service, 0) + 1
            if entry.service == "arm":
                caller = entry.caller_oid or ""
                arm_by_caller[caller] = arm_by_caller.get(caller, 0) + 1
                throttled += entry.status == 429
        return {"requests": services, "arm_requests": services.get("arm", 0),
                "arm_by_caller": arm_by_caller, "arm_throttled": throttled,
                "ssh_connections": self.vms.ssh_connections + self.machines.ssh_connections}

    @property
    def egress_dir(self) -> Path:
        """Where each running VM's and machine's egress is published for graders in other
        processes (`<ssh address>.json`, readable by this user only)."""
        return self.workdir / "egress"

    def egress_for(self, host: str) -> dict | None:
        """How the grader's probe reaches Azure from the machine answering SSH at `host`: its
        egress proxy with the machine's credential and the local Azure's CA (None: no machine
        of this local Azure is there)."""
        live = self.vms.at_address(host)
        if live is None:
            live = next((m for m in list(self.machines.machines.values())
                         if m.address == host and m.proxy is not None), None)
        return live.egress() if live is not None else None

    @property
    def tenant_id(self) -> str:
        return self.cloud.tenant_id

    @property
    def ca_path(self) -> Path:
        return self.ca.ca_path

    @property
    def env(self) -> dict[str, str]:
        """The environment variables that reach this local Azure."""
        proxy = f"http://127.0.0.1:{self.proxy.port}"
        ca = str(self.ca.ca_path)
        env = {
            "HTTPS_PROXY": proxy, "https_proxy": proxy,
            "NO_PROXY": "localhost,127.0.0.1", "no_proxy": "localhost,127.0.0.1",
            "REQUESTS_CA_BUNDLE": ca, "CURL_CA_BUNDLE": ca, "SSL_CERT_FILE": ca,
            "AZURE_TENANT_ID": self.tenant_id,
            "AZURE_CLIENT_ID": self.operator.client_id,
            "AZURE_CLIENT_SECRET": self.operator.client_secret,
            "AZURE_SUBSCRIPTION_ID": self.subscription_id,
            "MILAB_GRADER_CLIENT_ID": self.grader.client_id,
            "MILAB_GRADER_CLIENT_SECRET": self.grader.client_secret,
        }
        env.update(self._extra_env())
        return env

    def _extra_env(self) -> dict[str, str]:
        # The port every VM answers SSH on (22 unless this process may not bind it), and what a
        # grader needs to know of this Azure: it is local, and whether VMs can install `az`.
        env = {"MILAB_SSH_PORT": str(self.vms.ssh_port), "MILAB_LOCAL_AZURE": "1",
               "MILAB_EGRESS_DIR": str(self.egress_dir)}
        if self.az_cli:
            env["MILAB_AZ_CLI"] = str(self.az_cli)
        user = self.operator_user
        if user is not None:
            env.update(MILAB_OPERATOR_USER=user.user_principal_name,
                       MILAB_OPERATOR_PASSWORD=user.password)
        return env

    @contextlib.contextmanager
    def environment(self) -> Iterator[dict[str, str]]:
        """Apply `env` to this process for the duration of the block."""
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            yield self.env
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def write_env_file(self, path: str | Path, env: dict[str, str] | None = None) -> None:
        """KEY=VALUE lines that reach this local Azure (its Owner's secret among them): only
        the file's owner may read it."""
        write_private(Path(path), "".join(f"{k}={v}\n" for k, v in (env or self.env).items()))

    def run(self, coro, timeout: float = 30):
        """Run a coroutine on the emulator's loop from another thread."""
        assert self._loop is not None, "LocalAzure is not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def add_service_principal(self, display_name: str, *, role: str | None = None,
                              scope: str | None = None) -> Identity:
        """A new app registration + service principal with a secret, optionally given a role."""
        secret = secrets.token_urlsafe(30)
        app = self.cloud.add_application(display_name, secret=secret)
        sp = self.cloud.add_service_principal(app.app_id, display_name)
        if role:
            self._grant(role, scope, sp.object_id, "ServicePrincipal")
        return Identity(self.tenant_id, app.app_id, secret, sp.object_id)

    def _grant(self, role: str, scope: str | None, principal_id: str,
               principal_type: str) -> None:
        """A built-in role for a principal, in force at once (at the subscription by default)."""
        definition = rbac.role_by_name(role)
        if definition is None:
            raise ValueError(f"unknown built-in role {role!r}")
        self.cloud.assign_role(
            scope=scope or f"/subscriptions/{self.subscription_id}",
            role_definition_id=f"/subscriptions/{self.subscription_id}/providers/"
                               f"Microsoft.Authorization/roleDefinitions/{definition.guid}",
            principal_id=principal_id, principal_type=principal_type, immediate=True)

    def add_machine(self, name: str, *, user: str = "azureuser",
                    public_keys: list[str] | tuple[str, ...] = ()) -> Machine:
        """A server outside Azure (see machines/arc.py): SSH for `user` with these OpenSSH public keys,
        the VMs' userland, no IMDS, and `azcmagent` to onboard it with Azure Arc."""
        if not name or "/" in name:
            raise ValueError(f"not a machine name: {name!r}")
        live = self.run(self.machines.add(name, user=user, public_keys=list(public_keys)))
        return Machine(name, live.host_address, self.machines.ssh_port, user)

    def remove_machine(self, name: str) -> None:
        """Switch the machine off and throw it away (its Arc resource, if any, stays in ARM)."""
        self.run(self.machines.remove(name))

    def add_user(self, user_principal_name: str, password: str | None = None, *,
                 role: str | None = None, scope: str | None = None) -> UserIdentity:
        """A new Entra user that signs in with a password or a device code (entra/users.py), optionally
        given a built-in role (at the subscription unless `scope` says otherwise)."""
        password = password or secrets.token_urlsafe(18) + "!Aa1"
        user = self.cloud.add_user(user_principal_name, password)
        if role:
            self._grant(role, scope, user.object_id, "User")
        return UserIdentity(self.tenant_id, user.user_principal_name, password, user.object_id)

    def make_operator_user(self, user_principal_name: str = f"operator@{TENANT_DOMAIN}",
                           password: str | None = None) -> UserIdentity:
        """The operator as a user (Owner of the subscription); `env` then carries
        MILAB_OPERATOR_USER and MILAB_OPERATOR_PASSWORD for `az login -u … -p …`."""
        self.operator_user = self.add_user(user_principal_name, password, role="Owner")
        return self.operator_user

    def approve_device_code(self, user_code: str, user_principal_name: str) -> None:
        """Complete a device code sign-in as this user, without a browser (entra/users.py)."""
        users.approve_device_code(self.cloud, user_code, user_principal_name)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> LocalAzure:
        t0 = time.perf_counter()
        ready = threading.Event()
        self._loop = eventloop.new_event_loop()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.call_soon(ready.set)
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="milab-local-azure", daemon=True)
        self._thread.start()
        _hook_exit_paths()
        _RUNNING.add(self)
        ready.wait()
        try:
            self.run(self._astart())
        except BaseException:
            self.stop()
            raise
        self.started_in = time.perf_counter() - t0
        return self

    async def _astart(self) -> None:
        # Its VMs' homes, keys and secrets are for this user alone.
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        self.tokens = TokenIssuer(self.cloud.tenant_id, clock=self.cloud.now)
        self.ca = CertificateAuthority(self.workdir)
        self._seed()
        builders = {"entra": login.build_app, "arm": arm.build_app, "graph": graph.build_app,
                    "keyvault": keyvault.build_app}
        routes = {host: (service, builders[service](self.cloud, self.tokens))
                  for service, hosts in SERVICE_HOSTS.items() for host in hosts}
        routes.update(self._extra_routes())
        # The local Azure's stand-in for racking a server (machines/control.py): its Owner only.
        routes[control.HOST] = ("control", control.build_app(
            self.tokens, self.operator.object_id, lambda: self.machines))
        self.tls = HttpListener(FrontDoor(self.cloud, routes), cert=self.ca)
        await self.tls.start()
        self._closers.append(self.tls.stop)
        self.proxy = ForwardProxy(tls_port=self.tls.port, allowed=EMULATED_HOSTS + CONTROL_HOSTS,
                                  faults=self.knobs.faults, name="host", tunnel=self.tls.adopt)
        await self.proxy.start()
        self._closers.append(self.proxy.stop)
        await self._start_extensions()

    def _extra_routes(self) -> dict:
        # aka.ms serves the Azure CLI installer to VMs (their proxies allow it; the host's not).
        return {AKA_MS_HOST: ("aka.ms", userland.build_aka_ms_app(self.az_cli))}

    async def _start_extensions(self) -> None:
        """The parts that come alive after the network: IMDS, the live VMs and the on-premises
        machines."""
        self.vms = VmFleet(self.cloud, self.tokens, workdir=self.workdir / "vms",
                           ca_path=self.ca.ca_path, tls_port=self.tls.port,
                           ssh_port=self.ssh_port, az_cli=self.az_cli,
                           signer=AttestationSigner(*self.ca.issue(*ATTESTATION_SIGNER)))
        self.vms.egress_dir = self.egress_dir
        self.vms.tls_tunnel = self.tls.adopt  # their egress proxies' tunnels (ForwardProxy)
        await self.vms.start()
        self._closers.append(self.vms.stop)
        self.machines = ArcFleet(self.cloud, self.tokens, workdir=self.workdir / "machines",
                                 ca_path=self.ca.ca_path, tls_port=self.tls.port,
                                 ssh_port=self.vms.ssh_port, az_cli=self.az_cli)
        self.machines.egress_dir = self.egress_dir
        self.machines.tls_tunnel = self.tls.adopt
        await self.machines.start()
        self._closers.append(self.machines.stop)

    def _seed(self) -> None:
        sub = self.cloud.add_subscription("Local Azure subscription")
        self.subscription_id = sub.subscription_id
        op_secret, gr_secret = secrets.token_urlsafe(30), secrets.token_urlsafe(30)
        op_app = self.cloud.add_application("milab-operator", secret=op_secret)
        op_sp = self.cloud.add_service_principal(op_app.app_id, "milab-operator",
                                                 graph_write=True)
        gr_app = self.cloud.add_application("milab-grader", secret=gr_secret)
        gr_sp = self.cloud.add_service_principal(gr_app.app_id, "milab-grader")
        scope = f"/subscriptions/{sub.subscription_id}"
        role_id = scope + "/providers/Microsoft.Authorization/roleDefinitions/"
        self.cloud.assign_role(scope=scope, role_definition_id=role_id + rbac.OWNER,
                               principal_id=op_sp.object_id, immediate=True)
        self.cloud.assign_role(scope=scope, role_definition_id=role_id + rbac.READER,
                               principal_id=gr_sp.object_id, immediate=True)
        self.operator = Identity(self.tenant_id, op_app.app_id, op_secret, op_sp.object_id)
        self.grader = Identity(self.tenant_id, gr_app.app_id, gr_secret, gr_sp.object_id)

    def stop(self) -> None:
        _RUNNING.discard(self)
        if self._loop is None:
            return
        if self._loop.is_running():
            async def close_all():
                for closer in reversed(self._closers):
                    with contextlib.suppress(Exception):
                        await closer()
            with contextlib.suppress(Exception):
                self.run(close_all(), timeout=15)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        with contextlib.suppress(Exception):
            self._loop.close()
        self._loop = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalAzure:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
