"""An Ubuntu-like userland for the local Azure's VMs: a bin folder, `sudo`, `apt` and the Azure
CLI installer.

A VM's commands run on the host with `PATH` set to the VM's own bin folder only, so the host's
tools are invisible unless linked in. The folder starts with a base system (bash, coreutils,
curl, python3); `jq` and `az` arrive only through the lab's own commands, as on a fresh Ubuntu
image: `sudo apt install jq -y` and `curl -sL https://aka.ms/InstallAzureCLIDeb | sudo bash`.
Nothing here grants privileges: `sudo` is a shim that runs its command as the same user.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

# Where the host's own tools are looked up (never the emulator's venv, whose tools a VM must not
# see by accident).
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

BASE_TOOLS = (
    "bash", "sh", "cat", "echo", "cut", "md5sum", "sha1sum", "sha256sum", "base64", "head",
    "tail", "grep", "egrep", "fgrep", "sed", "awk", "tr", "sort", "uniq", "wc", "sleep", "date",
    "rm", "mkdir", "rmdir", "mktemp", "env", "ls", "cp", "mv", "ln", "chmod", "touch", "tee",
    "xargs", "basename", "dirname", "id", "whoami", "uname", "printf", "test", "[", "true",
    "false", "readlink", "realpath", "pwd", "seq", "expr", "stat", "du", "df", "find", "diff",
    "cmp", "od", "xxd", "timeout", "nohup", "kill", "ps", "gzip", "gunzip", "tar", "less",
    "more", "which", "curl", "stty", "tty", "nproc", "paste", "comm", "fold", "rev", "yes",
)

# Packages a fresh Ubuntu image already has: `apt install` reports them as up to date.
PREINSTALLED = (
    "apt", "apt-transport-https", "bash", "ca-certificates", "coreutils", "curl", "gawk",
    "gnupg", "grep", "gzip", "lsb-release", "python3", "sed", "sudo", "tar", "findutils",
    "procps", "openssh-server", "debianutils",
)

AZ_PACKAGE = "azure-cli"
NOT_CONFIGURED = ("milab: the local Azure has no Azure CLI to install: start it with "
                  "LocalAzure(az_cli=...), MILAB_AZ_CLI=<path to az> or "
                  "`milab emulator --az-cli <path to az>`")


def host_tool(name: str) -> str | None:
    """The host's executable of that name, if any."""
    return shutil.which(name, path=HOST_PATH)


def _write_script(path: Path, text: str | bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(text, bytes):  # a native program (the warm interpreter's client)
        tmp.write_bytes(text)
    else:
        tmp.write_text(text)
    tmp.chmod(0o755)
    os.replace(tmp, path)


def _link(bin_dir: Path, name: str, target: str) -> None:
    link = bin_dir / name
    if link.is_symlink() or link.exists():
        return
    link.symlink_to(target)


def provision(bin_dir: Path, *, computer_name: str, az_cli: Path | None,
              python3: str | bytes | None = None) -> None:
    """Fill a VM's bin folder: the base system and the shims. What is there already is kept,
    as a real disk keeps it across restarts: installed tools, and whatever the VM's root put in
    place of a base tool. `python3`: the text of the VM's python3 instead of the plain shim
    (the warm interpreter's client, warmpython.py)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in BASE_TOOLS:
        target = host_tool(name)
        if target:
            _link(bin_dir, name, target)
    bash = host_tool("bash") or "/bin/bash"
    apt = _apt_script(bash, bin_dir, az_cli)
    shims = {
        "python3": f"#!{bash}\n# The VM's python3 is the emulator's interpreter, so "
                   f"azure-identity is importable.\nexec {shlex.quote(sys.executable)} \"$@\"\n",
        "sudo": _sudo_script(bash), "apt": apt, "apt-get": apt,
    }
    if python3 is not None:  # warm interpreter (warmpython.py)
        shims["python3"] = python3
    for name, text in shims.items():
        if not (bin_dir / name).exists():
            _write_script(bin_dir / name, text)
    _write_script(bin_dir / "hostname", f"#!{bash}\necho {shlex.quote(computer_name)}\n")


# sudo's own options, read and dropped: what stays in "$@" is the command ($login: -i, -s).
SUDO_OPTIONS = """while [ $# -gt 0 ]; do
  case "$1" in
    -u|-g|-p|-C|-D|-h|-r|-t|-U) shift 2 ;;
    --) shift; break ;;
    -i|-s|--login|--shell) login=1; shift ;;
    -*) shift ;;
    *) break ;;
  esac
done
"""


def _sudo_script(bash: str) -> str:
    return f"""#!{bash}
# sudo for the local Azure's VMs: runs the command as the same user (no privilege is gained);
# SUDO_USER tells apt it was asked "as root".
{SUDO_OPTIONS}export SUDO_USER="${{SUDO_USER:-$USER}}"
if [ $# -eq 0 ]; then
  if [ -n "$login" ]; then exec {bash} -i; fi
  echo "usage: sudo [-u user] command" >&2
  exit 1
fi
exec "$@"
"""


def _apt_script(bash: str, bin_dir: Path, az_cli: Path | None) -> str:
    preinstalled = " ".join(PREINSTALLED)
    az = shlex.quote(str(az_cli)) if az_cli else "''"
    return f"""#!{bash}
# apt / apt-get for the local Azure's VMs. `update` succeeds; `install` links the host's tool of
# that name into this VM's bin folder, or fails as on a broken mirror when the host lacks it.
VM_BIN={shlex.quote(str(bin_dir))}
HOST_PATH={shlex.quote(HOST_PATH)}
AZ_CLI={az}
PREINSTALLED=" {preinstalled} "
prog=$(basename "$0")
if [ "$prog" = apt ] && [ ! -t 1 ]; then
  echo "" >&2
  echo "WARNING: apt does not have a stable CLI interface. Use with caution in scripts." >&2
  echo "" >&2
fi
cmd=""; pkgs=()
for arg in "$@"; do
  case "$arg" in
    -*) ;;
    *) if [ -z "$cmd" ]; then cmd=$arg; else pkgs+=("$arg"); fi ;;
  esac
done
need_root() {{
  if [ -z "$SUDO_USER" ]; then
    echo "E: Could not open lock file $1 - open (13: Permission denied)" >&2
    echo "E: Unable to acquire the dpkg frontend lock ($1), are you root?" >&2
    exit 100
  fi
}}
reading() {{
  echo "Reading package lists..."
  echo "Building dependency tree..."
  echo "Reading state information..."
}}
source_of() {{
  local pkg=$1 name=${{1%%=*}}
  # Debian package names only: no paths, so nothing but a host tool of that name is linked.
  [[ "$name" =~ ^[a-z0-9][a-z0-9.+-]+$ ]] || return 0
  if [ "$name" = {AZ_PACKAGE} ]; then
    [ -n "$AZ_CLI" ] && [ -x "$AZ_CLI" ] && echo "$AZ_CLI"
    return
  fi
  PATH=$HOST_PATH command -v -- "$name" 2>/dev/null | grep '^/' || true
}}
binary_of() {{
  if [ "${{1%%=*}}" = {AZ_PACKAGE} ]; then echo az; else echo "${{1%%=*}}"; fi
}}
case "$cmd" in
  update)
    need_root /var/lib/apt/lists/lock
    echo "Hit:1 http://azure.archive.ubuntu.com/ubuntu jammy InRelease"
    echo "Hit:2 http://azure.archive.ubuntu.com/ubuntu jammy-updates InRelease"
    echo "Hit:3 http://azure.archive.ubuntu.com/ubuntu jammy-backports InRelease"
    echo "Hit:4 http://azure.archive.ubuntu.com/ubuntu jammy-security InRelease"
    reading
    echo "All packages are up to date."
    ;;
  install)
    need_root /var/lib/dpkg/lock-frontend
    reading
    new=()
    for pkg in "${{pkgs[@]}}"; do
      name=${{pkg%%=*}}
      bin=$(binary_of "$pkg")
      if [[ "$PREINSTALLED" == *" $name "* ]] || [ -e "$VM_BIN/$bin" ]; then
        echo "$name is already the newest version."
        continue
      fi
      if [ -z "$(source_of "$pkg")" ]; then
        echo "E: Unable to locate package $name" >&2
        exit 100
      fi
      new+=("$pkg")
    done
    if [ ${{#new[@]}} -eq 0 ]; then
      echo "0 upgraded, 0 newly installed, 0 to remove and 0 not upgraded."
      exit 0
    fi
    echo "The following NEW packages will be installed:"
    echo "  ${{new[*]}}"
    echo "0 upgraded, ${{#new[@]}} newly installed, 0 to remove and 0 not upgraded."
    for pkg in "${{new[@]}}"; do
      name=${{pkg%%=*}}
      src=$(source_of "$pkg")
      bin=$(binary_of "$pkg")
      echo "Selecting previously unselected package $name."
      echo "Unpacking $name ..."
      if [ "$name" = {AZ_PACKAGE} ]; then
        # A wrapper, not a link: az finds its own interpreter next to its real path.
        printf '#!%s\\nexec %q "$@"\\n' {shlex.quote(bash)} "$src" > "$VM_BIN/$bin"
        chmod 755 "$VM_BIN/$bin"
      else
        ln -sf "$src" "$VM_BIN/$bin"
      fi
      echo "Setting up $name ..."
    done
    ;;
  remove|purge)
    need_root /var/lib/dpkg/lock-frontend
    reading
    for pkg in "${{pkgs[@]}}"; do
      bin=$(binary_of "$pkg")
      if [ -L "$VM_BIN/$bin" ] || [ -f "$VM_BIN/$bin" ]; then
        rm -f "$VM_BIN/$bin"; echo "Removing ${{pkg%%=*}} ..."
      else
        echo "Package '${{pkg%%=*}}' is not installed, so not removed"
      fi
    done
    ;;
  ""|-h|--help)
    echo "Usage: $prog [options] command"
    ;;
  *)
    echo "E: Invalid operation $cmd" >&2
    exit 100
    ;;
esac
"""


def installer_script(az_cli: Path | None) -> str:
    """What `curl -sL https://aka.ms/InstallAzureCLIDeb` returns: a script for `sudo bash`."""
    if az_cli is None:
        return f"#!/usr/bin/env bash\necho {shlex.quote(NOT_CONFIGURED)} >&2\nexit 1\n"
    return """#!/usr/bin/env bash
# The local Azure's stand-in for Microsoft's deb_install.sh: the same steps, through this VM's apt.
set -e
echo "Getting packages needed for the installation process..."
apt-get update
apt-get install -y apt-transport-https lsb-release gnupg curl
echo "Adding the Azure CLI repository for jammy..."
apt-get update
apt-get install -y azure-cli
"""


def build_aka_ms_app(az_cli: Path | None) -> Starlette:
    """aka.ms, as far as a VM needs it: the Azure CLI installer's short link."""

    async def install_azure_cli(request: Request):
        return PlainTextResponse(installer_script(az_cli), media_type="text/x-shellscript")

    async def unknown(request: Request):
        return PlainTextResponse("Not Found", status_code=404)

    return Starlette(routes=[
        Route("/InstallAzureCLIDeb", install_azure_cli, methods=["GET", "HEAD"]),
        Route("/InstallAzureCLIDeb/", install_azure_cli, methods=["GET", "HEAD"]),
        Route("/{path:path}", unknown, methods=["GET", "HEAD", "POST"]),
    ])
