"""The `milab` command."""

from __future__ import annotations

import argparse
import signal
import sys
import threading


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
    azure = LocalAzure(propagation_delay=args.propagation_delay, az_cli=args.az_cli,
                       ssh_port=args.ssh_port)
    try:
        azure.start()
    except OSError as exc:
        print(f"milab emulator: could not start the local Azure: {exc}", file=sys.stderr)
        return 1
    try:
        azure.write_env_file(args.env_file)
        print(f"milab emulator: ready in {azure.started_in:.2f}s; environment in {args.env_file}",
              flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        azure.stop()
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
    emu.set_defaults(func=_emulator)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
