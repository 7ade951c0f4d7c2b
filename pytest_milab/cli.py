"""The `milab` command."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
from pathlib import Path

# Listed here, not imported: the emulator's dependencies are an extra (tests/emulator/
# test_knobs.py checks these match emulator.faults.LATENCY_SERVICES and QUIRKS).
LATENCY_SERVICES = ("arm", "keyvault", "entra", "graph", "imds", "himds", "aka.ms",
                    "ssh_handshake")
QUIRK_NAMES = ("imds-wrong-resource-id", "imds-no-tags-path", "imds-token-audience-mismatch",
               "arm-permissions-too-wide", "arm-list-denied", "keyvault-accepts-any-audience")


def _emulator(args: argparse.Namespace) -> int:
    try:
        from .emulator import LocalAzure
    except ImportError as exc:  # the emulator extra is not installed
        print(f"milab emulator: missing dependency ({exc.name}); "
              "install it with: pip install 'pytest-milab[emulator]'", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    latency, throttle = dict(args.latency), args.throttle
    if args.machine and not args.machine_key:
        print("milab emulator: --machine needs at least one --machine-key (the public keys "
              "that may log in)", file=sys.stderr)
        return 2
    try:
        labs = _lab_requests(args)
    except ValueError as exc:
        print(f"milab emulator: {exc}", file=sys.stderr)
        return 2
    try:
        keys = [Path(path).read_text().strip() for path in args.machine_key]
    except OSError as exc:
        print(f"milab emulator: cannot read a machine key: {exc}", file=sys.stderr)
        return 2
    try:
        azure = LocalAzure(propagation_delay=args.propagation_delay, az_cli=args.az_cli,
                           ssh_port=args.ssh_port, latency={} if args.hold_knobs else latency,
                           throttle=throttle and not args.hold_knobs, quirks=args.quirk)
    except ValueError as exc:  # an unknown latency service or quirk
        print(f"milab emulator: {exc}", file=sys.stderr)
        return 2
    try:
        azure.start()
    except OSError as exc:
        print(f"milab emulator: could not start the local Azure: {exc}", file=sys.stderr)
        return 1
    if args.operator_user:
        azure.make_operator_user(args.operator_user)
    try:
        machines = [azure.add_machine(name, user=args.machine_user, public_keys=keys)
                    for name in args.machine]
    except (OSError, ValueError) as exc:
        print(f"milab emulator: could not add the machine: {exc}", file=sys.stderr)
        azure.stop()
        return 1

    def print_stats(*_) -> None:
        print("milab emulator: stats " + json.dumps(azure.stats(), sort_keys=True), flush=True)

    def switch_knobs(*_) -> None:
        on = not (azure.knobs.latency or azure.knobs.throttle)
        azure.knobs.latency = dict(latency) if on else {}
        azure.knobs.throttle = throttle and on
        print(f"milab emulator: knobs {'on' if on else 'off'}", flush=True)

    signal.signal(signal.SIGUSR1, print_stats)
    signal.signal(signal.SIGUSR2, switch_knobs)
    try:
        try:
            azure.write_env_file(args.env_file)
        except OSError as exc:
            print(f"milab emulator: --env-file {args.env_file}: cannot write it "
                  f"({exc.strerror})", file=sys.stderr)
            return 2
        if labs:
            code = _build_labs(azure, args, labs)
            if code:
                return code
        for machine in machines:
            print(f"milab emulator: on-premises machine {machine.name}: ssh -p {machine.port} "
                  f"{machine.user}@{machine.address}", flush=True)
        print(f"milab emulator: ready in {azure.started_in:.2f}s; environment in {args.env_file}",
              flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        azure.stop()
    return 0


def _lab_requests(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """`--lab NAME[:DEFECT]`s (and `--labs N` complete ones) as (name, defect) pairs."""
    labs: list[tuple[str, str | None]] = []
    for text in args.lab:
        name, _, defect = text.partition(":")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", name):
            raise ValueError(f"--lab {text!r}: a lab's name is letters, digits, _ . - "
                             "(up to 63)")
        labs.append((name, defect or None))
    labs += [(f"lab-{i}", None) for i in range(1, args.labs + 1)]
    if labs and not args.suite:
        raise ValueError("--lab and --labs build labs with a suite's stages: pass --suite DIR "
                         "(e.g. example_suites/managed_identity)")
    names = [n for n, _ in labs]
    if len(set(names)) != len(names):
        raise ValueError("two labs have the same name")
    return labs


def _build_labs(azure, args: argparse.Namespace, labs: list[tuple[str, str | None]]) -> int:
    """Build labs with the suite's stages (with a named defect each, if asked), and write
    what a grader needs beside the env file: its SSH key, an env file as the Reader-only
    grader, and a roster."""
    import shutil
    import time

    from .emulator.localazure import write_private
    from .errors import SuiteError
    from .provision import build_in_local_azure
    from .suiteload import load_suite

    try:
        suite = load_suite(args.suite)
        stages = suite.suite.stages()
        defects = suite.defects()
    except (SuiteError, ImportError) as exc:
        print(f"milab emulator: --suite {args.suite}: {exc}", file=sys.stderr)
        return 2
    unknown = sorted({d for _, d in labs if d and d not in defects})
    if unknown:
        print(f"milab emulator: the suite has no defect {unknown[0]!r} (it has: "
              f"{', '.join(sorted(defects)) or 'none'})", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    where = Path(args.env_file).resolve().parent
    key = None
    for name, defect in labs:
        lab_stages, state = defects[defect].apply(stages) if defect else (stages, {})
        key, failures = build_in_local_azure(azure, [name], lab_stages, suite.spec,
                                             state=state)
        for failure in failures:
            print(f"milab emulator: lab {name}: {failure}", flush=True)
    grader_key = where / "grader_ed25519"
    write_private(grader_key, key.read_text())
    shutil.copyfile(f"{key}.pub", f"{grader_key}.pub")
    env = dict(azure.env, AZURE_CLIENT_ID=azure.grader.client_id,
               AZURE_CLIENT_SECRET=azure.grader.client_secret)
    grader_env = where / (Path(args.env_file).stem + ".grader.env")
    azure.write_env_file(grader_env, env)
    roster = where / "class.csv"
    roster.write_text("group,student\n" + "".join(f"{n},{n}\n" for n, _ in labs))
    broken = [f"{n} ({d} broken)" for n, d in labs if d]
    print(f"milab emulator: built {len(labs)} lab(s) in {time.perf_counter() - t0:.1f}s"
          + (f"; with defects: {', '.join(broken)}" if broken else ""), flush=True)
    print("milab emulator: grade them from another shell, as the Reader-only grader:\n"
          f"    set -a; . {grader_env}; set +a\n"
          f"    pytest {args.suite} --milab-roster {roster} --milab-ssh-key {grader_key}",
          flush=True)
    return 0


def _latency(text: str) -> tuple[str, float]:
    """`SERVICE=SECONDS` for --latency."""
    service, sep, seconds = text.partition("=")
    try:
        value = float(seconds)
    except ValueError:
        value = -1.0
    if not sep or not service or value < 0:
        raise argparse.ArgumentTypeError(f"expected SERVICE=SECONDS, got {text!r}")
    return service.strip(), value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return value


def _add_knob_flags(emu: argparse.ArgumentParser) -> None:
    emu.add_argument("--latency", type=_latency, action="append", default=[],
                     metavar="SERVICE=SECONDS",
                     help=f"add this delay to every request to a service "
                          f"({', '.join(LATENCY_SERVICES)}); repeatable")
    emu.add_argument("--throttle", action="store_true",
                     help="throttle ARM with token buckets per caller and subscription "
                          "(429 with Retry-After)")
    emu.add_argument("--quirk", action="append", default=[], choices=QUIRK_NAMES,
                     metavar="NAME", help=f"make Azure misbehave on purpose; repeatable; one "
                                          f"of: {', '.join(QUIRK_NAMES)}")
    emu.add_argument("--hold-knobs", action="store_true",
                     help="start with --latency and --throttle off (to build labs quickly); "
                          "SIGUSR2 switches them on and off. SIGUSR1 prints one line of counts "
                          "(requests per service, ARM requests per caller, SSH connections)")


def _load_env_file(path: str) -> None:
    for line in open(path, encoding="utf-8"):
        key, sep, value = line.rstrip("\n").partition("=")
        if sep and key and not key.startswith("#"):
            os.environ[key] = value


def _cleanup(args: argparse.Namespace) -> int:
    """Delete what provision runs left behind (tagged milab-run), e.g. after a killed run."""
    from .azure.clients import check_credential, default_subscription, make_credential
    from .errors import MilabError
    from .provision import cleanup

    if args.env_file:
        try:
            _load_env_file(args.env_file)
        except (OSError, UnicodeDecodeError) as exc:
            print(f"milab cleanup: --env-file {args.env_file}: cannot read it "
                  f"({getattr(exc, 'strerror', None) or exc})", file=sys.stderr)
            return 2
    try:
        credential = make_credential()
        check_credential(credential)
        subscription = (args.subscription or os.environ.get("AZURE_SUBSCRIPTION_ID")
                        or default_subscription(credential))
        deleted = cleanup(credential, subscription, args.run)
    except MilabError as exc:
        print(f"milab cleanup: {exc}", file=sys.stderr)
        return 2
    for item in deleted:
        print(f"deleted {item}")
    what = f"run {args.run}" if args.run else "any provision run"
    print(f"milab cleanup: {len(deleted)} leftover(s) of {what} removed")
    return 0


PREFLIGHT_OPTIONS = ("group", "roster", "subscription", "ssh-user", "ssh-key", "ssh-port",
                     "ssh-config", "concurrency", "timeout")


def _preflight(args: argparse.Namespace) -> int:
    """Before the deadline: can the grader read each lab and log in to its machine?"""
    from .errors import MilabError
    from .evidence import Connections, Gatherer
    from .run import check_environment, quiet_sdk_logs
    from .settings import resolve
    from .suite import Suite
    from .suiteload import load_suite
    from .text import clean

    try:
        settings = resolve({o: getattr(args, o.replace("-", "_")) for o in PREFLIGHT_OPTIONS},
                           {})
        if not settings.targets:
            raise MilabError("no lab to check: pass --roster FILE or --group NAME")
        loaded = load_suite(args.suite)
        check_environment(settings)
        from .azure.clients import (
            ClientPool,
            check_credential,
            default_subscription,
            make_credential,
        )

        credential = make_credential()
        with quiet_sdk_logs(False):
            check_credential(credential)
    except (MilabError, ImportError) as exc:
        print(f"milab preflight: {exc}", file=sys.stderr)
        return 2
    # The suite's reads and machine, no probe: what grading needs before it judges anything.
    suite = Suite(spec=loaded.spec, reads=loaded.suite.reads, machine=loaded.suite.machine)
    connections = Connections()
    gatherer = Gatherer(settings, suite, ClientPool(credential, settings.timeout), connections,
                        lambda: default_subscription(credential, settings.timeout))
    try:
        found = gatherer.gather_all([t for t in settings.targets if not t.problem])
    finally:
        connections.close_all()
    ready = 0
    width = max(len(clean(t.label, 40)) for t in settings.targets)
    for target in settings.targets:
        ev = found.get(target.label)
        verdict = _preflight_verdict(target, ev)
        ready += verdict.startswith("ready")
        print(f"{clean(target.label, 40):<{width}}  {clean(verdict, 400)}")
    total = len(settings.targets)
    print(f"milab preflight: {ready} of {total} lab(s) ready"
          + (f"; {total - ready} need attention" if ready < total else ""))
    return 0 if ready == total else 1


def _preflight_verdict(target, ev) -> str:
    if target.problem or ev is None:
        return f"not checked: {target.problem or 'not gathered'}"
    if ev.problem:
        return f"cannot check: {ev.problem}"
    if "group" in ev.errors:
        return f"cannot read the group: {ev.errors['group']}"
    if ev.control.get("group") is None:
        return f"no resource group {ev.group!r} in subscription {ev.subscription}"
    ssh = ev.ssh
    if ssh is None:
        return "ready: the group is readable (the suite has no machine to log in to)"
    if not ssh.ok:
        return f"cannot log in to the machine: {ssh.error}"
    key = ssh.host_key or {}
    seen = f"; host key {key.get('sha256')} {'known' if key.get('known') else 'first seen'}" \
        if key else ""
    return f"ready: the group is readable, logged in to {ssh.target}{seen}"


def _onboard(args: argparse.Namespace) -> int:
    """What a student runs to let the grader in: Reader on the lab's group, the grader's key
    on the lab's machine. Nothing here changes anything: it prints."""
    from .errors import MilabError, SuiteError
    from .settings import valid_group
    from .suiteload import load_suite
    from .text import clean

    try:
        loaded = load_suite(args.suite)
        group = args.group or getattr(loaded.spec, "group", None)
        if group is not None and not valid_group(group):
            # It is printed into the commands a student runs: only a name Azure accepts.
            raise MilabError(f"--group {clean(str(group), 100)!r}: not a valid resource group "
                             "name (1-90 letters, digits, _ - . ( ), not ending in a period)")
        key = Path(args.public_key).expanduser().read_text().strip()
        if not key.startswith(("ssh-", "ecdsa-", "sk-")):
            raise MilabError(f"--public-key {args.public_key}: not an OpenSSH public key")
        grader = args.grader_object_id or _grader_object_id()
    except (MilabError, SuiteError, ImportError) as exc:
        print(f"milab onboard: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"milab onboard: --public-key {args.public_key}: cannot read it "
              f"({exc.strerror})", file=sys.stderr)
        return 2
    group = group or "<your lab's group>"
    hook = getattr(loaded.conftest, "pytest_milab_onboard", None)
    print("# Let the grader read your lab (nothing else: Reader cannot change anything):")
    print(f"az role assignment create --assignee {grader} --role Reader \\\n"
          f"    --scope $(az group show --name {group} --query id --output tsv)")
    print("# Let the grader log in to your lab's machine:")
    lines = hook(spec=loaded.spec, group=group, public_key=key, user=args.ssh_user) \
        if hook else None
    print("\n".join(lines or [f"echo '{key}' >> ~{args.ssh_user}/.ssh/authorized_keys   "
                              "# on the machine, for the grader's own user"]))
    print(f"# The grader then grades with --milab-ssh-user {args.ssh_user}.")
    if args.create_evidence_app:
        try:
            uri = create_evidence_app()
        except Exception as exc:  # noqa: BLE001 - said in one line
            print(f"milab onboard: creating the evidence app failed: {exc}", file=sys.stderr)
            return 2
        print(f"# Created the app registration {EVIDENCE_APP!r} ({uri}): grade with "
              f"--milab-evidence-audience {uri}")
    elif args.evidence_app:
        print(EVIDENCE_STEPS)
    return 0


EVIDENCE_APP = "milab evidence"
# Once per tenant (the teacher's): an app registration with an app ID URI and nothing else
# (no roles, no scopes, no permissions), so a token for it opens nothing anywhere.
EVIDENCE_STEPS = f"""# Once per tenant, for signed evidence: an app registration that authorizes nothing
appId=$(az ad app create --display-name "{EVIDENCE_APP}" --sign-in-audience AzureADMyOrg \\
        --query appId --output tsv)
az ad app update --id "$appId" --identifier-uris "api://$appId"
az ad sp create --id "$appId"
# Grade with --milab-evidence-audience "api://$appId" (or milab_evidence_audience in the ini)."""


def create_evidence_app(credential=None, timeout: float = 60.0) -> str:
    """Create the evidence app registration through Microsoft Graph (Application.ReadWrite
    needed): its app ID URI, `api://<appId>`."""
    from .azure.clients import graph_call, make_credential

    credential = credential or make_credential()

    def call(method: str, path: str, body: dict) -> dict:
        return graph_call(credential, method, path, body, timeout=timeout)

    app = call("POST", "/applications", {"displayName": EVIDENCE_APP,
                                         "signInAudience": "AzureADMyOrg"})
    uri = f"api://{app['appId']}"
    call("PATCH", f"/applications/{app['id']}", {"identifierUris": [uri]})
    call("POST", "/servicePrincipals", {"appId": app["appId"]})
    return uri


def _grader_object_id() -> str:
    """The object id of the credential this grader signs in with."""
    from .azure.clients import check_credential, make_credential
    from .provision import principal_claims
    from .run import quiet_sdk_logs

    credential = make_credential()
    with quiet_sdk_logs(False):
        check_credential(credential)
        return principal_claims(credential)["oid"]


def _merge_reports(args: argparse.Namespace) -> int:
    """One grade book from the JSON reports of a class graded in shards."""
    from . import reports

    datas = []
    for path in args.reports:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if not isinstance(data, dict) or "groups" not in data:
                raise ValueError("not a milab JSON report")
        except (OSError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or exc
            print(f"milab merge-reports: {path}: {why}", file=sys.stderr)
            return 2
        datas.append(data)
    try:
        labs, steps = reports.merge(datas)
    except ValueError as exc:
        print(f"milab merge-reports: {exc}", file=sys.stderr)
        return 2
    for out in args.out:
        if Path(out).suffix.lower() not in reports.SUFFIXES:
            print(f"milab merge-reports: --out {out}: the name must end in "
                  f"{reports.SUFFIX_WORDS}", file=sys.stderr)
            return 2
        reports.write(out, labs, steps)
        print(f"milab merge-reports: {len(labs)} lab(s) from {len(datas)} report(s) in {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="milab", description="pytest-milab tools")
    sub = parser.add_subparsers(dest="command", required=True)
    emu = sub.add_parser("emulator", help="run the local Azure until interrupted")
    emu.add_argument("--env-file", required=True,
                     help="write KEY=VALUE lines that reach the local Azure to this file")
    emu.add_argument("--propagation-delay", type=float, default=0.0, metavar="SECONDS",
                     help="how long role assignments and access policies take to apply")
    emu.add_argument("--az-cli", default=None, metavar="PATH",
                     help="the `az` of a separately installed Azure CLI, for VMs that install it")
    emu.add_argument("--ssh-port", type=int, default=None,
                     help="the port VMs listen on for SSH when port 22 cannot be bound")
    emu.add_argument("--machine", action="append", default=[], metavar="NAME",
                     help="add an on-premises machine outside Azure (for Azure Arc); repeatable")
    emu.add_argument("--machine-key", action="append", default=[], metavar="PATH",
                     help="an OpenSSH public key file that may log in to the machines; "
                          "repeatable (the grader's and the student's)")
    emu.add_argument("--machine-user", default="azureuser", metavar="USER",
                     help="the machines' admin user (default: azureuser)")
    emu.add_argument("--suite", default=None, metavar="DIR",
                     help="the suite whose stages build the labs (--lab, --labs)")
    emu.add_argument("--lab", action="append", default=[], metavar="NAME[:DEFECT]",
                     help="build a lab named NAME, complete or with the suite's DEFECT; "
                          "repeatable. Writes beside the env file the grader's SSH key "
                          "(grader_ed25519), a Reader-only env file (<env>.grader.env) and a "
                          "roster (class.csv)")
    emu.add_argument("--labs", type=_count, default=0, metavar="N",
                     help="build N complete labs (lab-1 ... lab-N)")
    emu.add_argument("--operator-user", default=None, metavar="UPN",
                     help="also make the operator an Entra user (Owner of the subscription) "
                          "with this name; the env file gets MILAB_OPERATOR_USER and "
                          "MILAB_OPERATOR_PASSWORD for `az login -u ... -p ...`")
    _add_knob_flags(emu)
    emu.set_defaults(func=_emulator)
    clean = sub.add_parser("cleanup", help="delete what provision runs left behind")
    clean.add_argument("--run", default=None, metavar="RUN_ID",
                       help="only this run's leftovers (default: every run's)")
    clean.add_argument("--subscription", default=None, metavar="ID")
    clean.add_argument("--env-file", default=None, metavar="PATH",
                       help="read KEY=VALUE lines first (e.g. a local Azure's env file)")
    clean.set_defaults(func=_cleanup)
    pre = sub.add_parser("preflight", help="check that the grader can read each lab and log "
                                           "in to its machine")
    pre.add_argument("--suite", required=True, metavar="DIR", help="the labs' suite")
    pre.add_argument("--group", action="append", default=None, metavar="NAME")
    for name in PREFLIGHT_OPTIONS[1:]:
        pre.add_argument(f"--{name}", default=None, metavar=name.upper().replace("-", "_"),
                         help=f"as --milab-{name} (env MILAB_{name.upper().replace('-', '_')})")
    pre.set_defaults(func=_preflight)
    onb = sub.add_parser("onboard", help="print the commands a student runs to let the grader "
                                         "in")
    onb.add_argument("--suite", required=True, metavar="DIR", help="the labs' suite")
    onb.add_argument("--public-key", required=True, metavar="FILE",
                     help="the grader's OpenSSH public key")
    onb.add_argument("--grader-object-id", default=None, metavar="ID",
                     help="the grader principal's object id (default: the signed-in one's)")
    onb.add_argument("--group", default=None, metavar="NAME",
                     help="the lab's group (default: the suite's)")
    onb.add_argument("--ssh-user", default="milabgrader", metavar="USER",
                     help="the grader's own account on the machine (default: milabgrader)")
    onb.add_argument("--evidence-app", action="store_true",
                     help="also print how to create the app registration for signed evidence "
                          "(--milab-evidence-audience), once per tenant")
    onb.add_argument("--create-evidence-app", action="store_true",
                     help="create that app registration now through Microsoft Graph")
    onb.set_defaults(func=_onboard)
    merge = sub.add_parser("merge-reports", help="one grade book from the JSON reports of a "
                                                  "class graded in shards (--milab-shard)")
    merge.add_argument("--out", action="append", required=True, metavar="PATH",
                       help="the merged report, by suffix; repeatable")
    merge.add_argument("reports", nargs="+", metavar="SHARD.json")
    merge.set_defaults(func=_merge_reports)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
