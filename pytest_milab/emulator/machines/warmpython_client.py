#!/usr/bin/python3 -IS
# The VM's python3, a client of the local Azure's warm interpreter (warmpython_server.py).
# warmpython.py writes this file into a VM's bin folder with the first lines filled in. It hands
# the server its argv, environment, mount namespace, working directory, umask and open file
# descriptors, passes
# on the signals it receives, and ends as the program did; anything the server cannot run
# exactly, or no server, and it execs the real interpreter instead. Only modules built into the
# interpreter (or _socket), so that starting it costs little more than a bare interpreter.
REAL = "/usr/bin/python3"  # filled in
SOCKET = "/nonexistent"  # filled in
TAG = b""  # filled in
import os  # noqa: E402
import sys  # noqa: E402


def real():
    os.execv(REAL, [REAL] + sys.argv[1:])


def main():
    args = sys.argv[1:]
    if os.isatty(0) or os.isatty(1) or os.isatty(2):
        real()  # interactive use, a terminal: the real interpreter
    fds = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            os.fstat(fd)
        except OSError:
            continue  # the listing's own descriptor
        fds.append(fd)
    fds.sort()
    if fds[:3] != [0, 1, 2] or len(fds) > 64:
        real()
    try:
        import _socket
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        sock.connect(SOCKET)
        namespace = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        mask = os.umask(0)
        os.umask(mask)
        message = b"\0".join([b"warm2", TAG, b"%d" % mask, b",".join(b"%d" % fd for fd in fds),
                              b"%d" % len(args)] + [os.fsencode(a) for a in args]
                             + [k + b"=" + v for k, v in os.environb.items()])
        rights = b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds + [namespace, cwd])
        sock.sendmsg([message], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
        answer = sock.recv(64)
    except OSError:
        real()
    if answer != b"run":
        real()
    import _signal

    def forward(signum, frame):
        try:
            sock.send(b"kill %d" % signum)
        except OSError:
            pass

    for signum in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT,
                   _signal.SIGUSR1, _signal.SIGUSR2, _signal.SIGALRM):
        if _signal.getsignal(signum) != _signal.SIG_IGN:
            _signal.signal(signum, forward)
    try:
        answer = sock.recv(64)
    except OSError:
        answer = b""
    word, _, number = answer.partition(b" ")
    if word == b"exit":
        os._exit(int(number))
    if word == b"signal":
        signum = int(number)
        try:
            _signal.signal(signum, _signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # SIGKILL, SIGSTOP: always their default
        os.kill(os.getpid(), signum)  # ends this process as the program ended, as a shell sees
        os._exit(128 + signum)
    os.write(2, b"python3: the local Azure's interpreter stopped\n")
    os._exit(1)


main()
