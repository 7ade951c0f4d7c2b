"""`sudo` inside a local Azure on-premises machine: hand the command to the emulator's broker.

Run as `python3 -I arcsudo.py SOCKET COMMAND [ARGS...]` by the machine's sudo script. The
command runs with full privileges, with this process's stdin, stdout, stderr, environment and
working directory; this process exits with its exit code. Standard library only.
"""

import json
import os
import socket
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: sudo [-u user] command", file=sys.stderr)
        return 1
    path, command = argv[0], argv[1:]
    request = {"argv": command, "env": dict(os.environ), "cwd": os.getcwd()}
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(path)
        socket.send_fds(sock, [json.dumps(request).encode()], [0, 1, 2])
        answer = json.loads(sock.recv(65536) or b"{}")
    except (OSError, ValueError) as exc:
        print(f"sudo: unable to run {command[0]}: {exc}", file=sys.stderr)
        return 1
    if "error" in answer:
        print(f"sudo: {command[0]}: command not found" if "No such file" in answer["error"]
              else f"sudo: {answer['error']}", file=sys.stderr)
        return 1
    return int(answer.get("rc", 1))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
