"""The `milab` command."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

# Listed here, not imported: the emulator's dependencies are an extra (tests/emulator/
# test_knobs.py checks these match emulator.faults.LATENCY_SERVICES and QUIRKS).
LATENCY_SERVICES = ("arm", "keyvault", "entra", "graph", "imds", "aka.ms", "ssh_handshake")
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
        azure.write_env_file(args.env_file)
        print(f"milab emulator: ready in {azure.started_in:.2f}s; environment in {args.env_file}",
              flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        azure.stop()
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
        _load_env_file(args.env_file)
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
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
