"""`Run`: one pytest run's settings and surroundings — the suite, the local Azure when asked
for, the credential, what xdist workers are handed — and the parts that do the work: the
evidence store, provision mode's driver and the results."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .errors import MilabError
from .evidence import Connections, Gatherer
from .results import Results
from .settings import OPTIONS, LabTarget, Settings, resolve
from .store import EvidenceStore
from .suite import Suite

if TYPE_CHECKING:
    from .provision import ProvisionDriver


def settings_from(config: pytest.Config) -> Settings:
    cli = {o.name: config.getoption(o.dest) for o in OPTIONS}
    ini = {}
    for o in OPTIONS:
        value = config.getini(f"milab_{o.name.replace('-', '_')}")
        ini[o.name] = value if value not in ("", []) else None
    return resolve(cli, ini, rootdir=Path(str(config.rootpath)))


def process_started() -> float:
    """When this process started, on the `time.monotonic()` clock (Linux: from /proc, so the
    interpreter's and pytest's own start count too; elsewhere: now)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            ticks = int(f.read().rpartition(")")[2].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        age = uptime - ticks / os.sysconf("SC_CLK_TCK")
        return time.monotonic() - max(0.0, age)
    except (OSError, ValueError, IndexError):
        return time.monotonic()


def in_background(fn, name: str) -> Future:
    """Run `fn` in a daemon thread of its own: its result (or exception) as a Future."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for it
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def grades_every_lab(config: pytest.Config) -> bool:
    """Whether this run is sure to grade every lab it was given, so that their evidence (the
    suite's reads and probe) may be gathered before pytest has collected the checks: one
    process (no pytest-xdist), nothing that deselects checks (-k, -m, --deselect, --lf, --sw,
    a test id on the command line), nothing that may stop the run early (-x, --maxfail: the
    labs past the stop are not reached) and no run that grades nothing (--collect-only,
    --setup-only, --setup-plan)."""
    option = config.option
    if getattr(option, "numprocesses", None) or hasattr(config, "workerinput"):
        return False
    if any(getattr(option, name, None) for name in (
            "keyword", "markexpr", "deselect", "lf", "stepwise", "maxfail", "collectonly",
            "setuponly", "setupplan")):
        return False
    return not any("::" in str(arg) for arg in config.args)


def check_environment(settings: Settings) -> None:
    """What the grader gave that cannot work, said before any lab is graded."""
    if settings.ssh_key:
        key = Path(settings.ssh_key).expanduser()
        if not key.is_file():
            raise MilabError(f"--milab-ssh-key {settings.ssh_key}: no such file")
        if not os.access(key, os.R_OK):
            raise MilabError(f"--milab-ssh-key {settings.ssh_key}: cannot read it (permission "
                             "denied)")
    for var in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
        path = os.environ.get(var)
        if path and not Path(path).exists():
            raise MilabError(f"{var} names {path}, which does not exist: is it a stopped local "
                             "Azure's env file? Start `milab emulator` again and load its new "
                             f"env file, or unset {var}")
    if os.environ.get("MILAB_LOCAL_AZURE") == "1":
        proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or ""
        if proxy and not _listening(proxy):
            raise MilabError(f"the local Azure this environment names (HTTPS_PROXY={proxy}) is "
                             "not running: start `milab emulator --env-file FILE` again and load "
                             "FILE, or unset the local Azure's variables")


def _listening(url: str) -> bool:
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url if "://" in url else "http://" + url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80),
                                      timeout=2):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def quiet_sdk_logs(verbose: bool):
    """The SDKs' own warnings (azure-identity lists every credential it tried) stay out of the
    terminal unless -v: milab says what failed in one line."""
    if verbose:
        yield
        return
    loggers = [logging.getLogger(name) for name in ("azure", "msal", "paramiko", "urllib3")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class Run:
    def __init__(self, config: pytest.Config, settings: Settings, suite: Suite) -> None:
        self.config = config
        self.settings = settings
        self.suite = suite
        self.results = Results()
        self.connections = Connections()
        self.store: EvidenceStore | None = None
        self.driver: ProvisionDriver | None = None
        self.azure = None  # the in-process local Azure (--milab-emulator)
        self.notes: list[str] = []
        self.run_id = ""
        self.started = process_started()
        self._saved_env: dict[str, str | None] = {}
        self._sign_in: Future | None = None

    @property
    def provisioning(self) -> bool:
        return self.settings.mode == "provision"

    # -- start and stop ----------------------------------------------------------------------
    def start(self) -> None:
        from .azure.clients import (
            ClientPool,
            check_credential,
            default_subscription,
            make_credential,
        )
        from .provision import new_run_id

        worker = getattr(self.config, "workerinput", None)
        given = worker.get("milab") if worker is not None else None
        if given:
            self._apply_env(given["env"])
            settings = dict(given["settings"])
            settings["targets"] = tuple(LabTarget(**t) for t in settings["targets"])
            self.settings = replace(self.settings, **settings)
            self.run_id = given["run_id"]
        else:
            self.run_id = new_run_id()
            if self.settings.emulator:
                self._start_local_azure()
            if self.provisioning and not self.settings.targets:
                group = f"milab-lab-{self.run_id}"
                self.settings = replace(self.settings,
                                        targets=(LabTarget(group=group, label=group),))
        if worker is None:
            check_environment(self.settings)
        verbose = self.config.get_verbosity() > 0

        # azure-identity (with requests and msal under it: a tenth of a second and more) is
        # imported here, before pytest collects the suite. Imported by the sign-in thread it
        # would share the interpreter with the collection and take twice as long, with the
        # first ARM read waiting for it; its round trips to Entra still go on during the
        # collection.
        import azure.identity  # noqa: F401

        def sign_in():
            credential = make_credential()
            if worker is None:
                with quiet_sdk_logs(verbose):
                    check_credential(credential)
            return credential

        # Signing in (importing azure-identity, a round trip or two to Entra) goes on while
        # pytest collects the suite; `signed_in()` waits for it before any lab is gathered.
        # (Under --debug, pytest's trace of these threads' imports is written one line at a
        # time: `plugin._one_debug_writer_at_a_time`.)
        self._sign_in = in_background(sign_in, "milab-sign-in")
        pool = ClientPool(self._sign_in, self.settings.timeout, self.settings.concurrency * 2)
        gatherer = Gatherer(self.settings, self.suite, pool, self.connections,
                            lambda: default_subscription(pool.credential, self.settings.timeout))
        local = self.settings.emulator or os.environ.get("MILAB_LOCAL_AZURE") == "1"
        if self.azure is not None:
            gatherer.egress = self.azure.egress_for
        if local and not os.environ.get("MILAB_AZ_CLI"):
            gatherer.cli_unavailable = ("the local Azure has no Azure CLI configured "
                                        "(set MILAB_AZ_CLI to an `az` to check this step)")
        if self.settings.evidence_audience:
            gatherer.token_verifier = self._token_verifier()
        if self.provisioning:
            self._prepare_builds(self.signed_in(), gatherer)
        self.store = EvidenceStore(self.settings, gatherer, self.connections,
                                   provisioning=self.provisioning)
        # Gathering begins now, while pytest collects, when the suite has something to gather
        # and every lab will be graded.
        suite = self.suite
        gathers = bool(suite.reads) or suite.machine is not None or suite.probe is not None
        if gathers and not self.provisioning and grades_every_lab(self.config):
            self.store.gather_early(self.signed_in)

    def signed_in(self):
        """The grader's credential, once the sign-in begun by `start` is done; its failure
        (no credentials, Entra unreachable) as a `MilabError`."""
        if self._sign_in is None:
            raise MilabError("the run has not started")
        return self._sign_in.result()

    def _token_verifier(self):
        """Checks tokens for the evidence audience against the labs' tenant: the grader's own
        (AZURE_TENANT_ID, else its credential's token's)."""
        from .azure.signed import TokenVerifier

        def tenant() -> str:
            if os.environ.get("AZURE_TENANT_ID"):
                return os.environ["AZURE_TENANT_ID"]
            from .provision import principal_claims

            return principal_claims(self.signed_in())["tid"]

        return TokenVerifier(self.settings.evidence_audience, tenant, self.settings.timeout)

    def _start_local_azure(self) -> None:
        try:
            from .emulator import LocalAzure
        except ImportError as exc:
            raise MilabError(f"--milab-emulator needs the emulator extra ({exc.name} is "
                             "missing): pip install 'pytest-milab[emulator]'") from None
        from .provision import build_in_local_azure, ssh_key_pair

        stages = self.suite.stages()
        self.azure = LocalAzure().start()
        env = dict(self.azure.env)
        port = int(env.get("MILAB_SSH_PORT", "22"))
        sub = self.azure.subscription_id
        if self.provisioning:
            # Provision mode builds as the operator (Owner); the lab is built by the run itself.
            key_path, _ = ssh_key_pair(Path(self.azure.workdir) / "grader-ssh")
            self._apply_env(env)
            self.settings = replace(self.settings, ssh_key=str(key_path), ssh_port=port,
                                    subscription=sub)
            return
        groups = self.settings.groups or (self.suite.demo_group,)
        key_path, failures = build_in_local_azure(self.azure, groups, stages, self.suite.spec)
        # A stage the local Azure cannot play (no Azure CLI to install) still leaves a lab to
        # grade; its steps say so.
        self.notes += [f"building the demo lab: {f}" for f in failures]
        # The demo grades as the local Azure's Reader, as a grader would.
        env.update({"AZURE_CLIENT_ID": self.azure.grader.client_id,
                    "AZURE_CLIENT_SECRET": self.azure.grader.client_secret})
        self._apply_env(env)
        targets = [LabTarget(group=g, label=g) for g in groups]
        self.settings = replace(self.settings, targets=tuple(targets), ssh_key=str(key_path),
                                ssh_port=port, subscription=sub)

    def _prepare_builds(self, credential, gatherer: Gatherer) -> None:
        """Provision mode: one `LabBuild` per lab; nothing is created until a check needs it."""
        from .azure.clients import default_subscription
        from .provision import ProvisionContext, ProvisionDriver, principal_claims, ssh_key_pair

        if self.settings.ssh_key:
            key = Path(self.settings.ssh_key)
            pub = key.with_name(key.name + ".pub")
            if not pub.exists():
                raise MilabError(f"--milab-ssh-key {key}: provision mode also needs {pub}, the "
                                 "public key the machines will accept")
            public = pub.read_text().strip()
        else:
            key, public = ssh_key_pair(Path(tempfile.mkdtemp(prefix="milab-ssh-")))
            self.settings = replace(self.settings, ssh_key=str(key))
        subscription = (self.settings.subscription or os.environ.get("AZURE_SUBSCRIPTION_ID")
                        or default_subscription(credential, self.settings.timeout))
        self.settings = replace(self.settings, subscription=subscription)
        gatherer.settings = self.settings
        claims = principal_claims(credential)
        self.driver = ProvisionDriver(self.suite.stages(), keep=self.settings.keep,
                                      propagation_deadline=self.settings.propagation_deadline,
                                      run_id=self.run_id)
        for target in self.settings.targets:
            if target.problem:
                continue
            self.driver.add(target.label, ProvisionContext(
                credential, target.subscription or subscription, claims["tid"], claims["oid"],
                target.group, self.suite.spec, self.run_id, public, str(key),
                self.settings.ssh_port, self.settings.timeout,
                self.settings.propagation_deadline, ssh_config=self.settings.ssh_config))

    def _apply_env(self, env: dict[str, str]) -> None:
        for key, value in env.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def worker_input(self) -> dict:
        """What the controller decided that workers must share: the local Azure's env, the
        labs (with fresh group names in provision mode), the run id and SSH key."""
        s = self.settings
        return {"env": {k: os.environ[k] for k in self._saved_env}, "run_id": self.run_id,
                "settings": {"targets": [asdict(t) for t in s.targets], "ssh_key": s.ssh_key,
                             "ssh_port": s.ssh_port, "subscription": s.subscription}}

    def finish_provision(self) -> None:
        if self.driver is not None:
            self.notes += self.driver.finish()

    def stop(self) -> None:
        if self.store is not None:
            self.store.close()  # a run that ends early gathers no more labs
        self.connections.close_all()
        if self.azure is not None:
            self.azure.stop()
            self.azure = None
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()
