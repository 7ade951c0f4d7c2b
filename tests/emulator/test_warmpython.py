"""The warm interpreter of the local Azure's VMs (warmpython.py): `python3 -I -S` in a VM, over
real SSH, behaves as a fresh interpreter (argv, environment, working directory, stdin, exit
codes, tracebacks, signals, child processes) while it is a child of the fork server; what the
fast path cannot honour runs the real interpreter; a client that goes takes its program along.
Where VMs have their own /usr (root), their /usr/bin/python3 (the probe's) is a client too, and
every warm run sees the VM's own /usr and /tmp.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time

import pytest
from vmkit import make_vm, wait_until

from pytest_milab.emulator.machines import namespace, warmpython, warmpython_server
from pytest_milab.emulator.machines.warmpython import WarmPython

REPORT = ("import json, os, sys; print(json.dumps({'argv': sys.argv, 'cwd': os.getcwd(), "
          "'ppid': os.getppid(), 'user': os.environ.get('USER'), 'lang': os.environ.get('LANG'), "
          "'isolated': sys.flags.isolated, 'no_site': sys.flags.no_site, "
          "'ssl': 'ssl' in sys.modules, 'emulator': [m for m in sys.modules "
          "if m.startswith(('pytest_milab', 'asyncssh', 'starlette', 'fabric'))]}))")


@pytest.fixture(scope="module")
def ubuntu(local_azure):
    warm = local_azure.vms.warm
    if warm is None:
        pytest.skip("the warm interpreter is off here (MILAB_WARM_PYTHON=0 or a long path)")
    assert warm.ready(), "the warm interpreter did not start"
    made = make_vm(local_azure, name="warm")
    yield made
    made.delete()


# How the grader's probe starts in a VM (pytest_milab/vm/probe.py).
PROBE_PYTHON3 = "/usr/bin/env -i PATH=/usr/bin:/bin LANG=C.UTF-8 /usr/bin/python3"


def server_pid(local_azure) -> int:
    return local_azure.vms.warm.proc.pid


def report(ubuntu, command: str) -> dict:
    import json
    result = ubuntu.run(command)
    assert result.exited == 0, result.stderr
    return json.loads(result.stdout)


def test_a_probe_like_run_is_a_child_of_the_warm_server(local_azure, ubuntu):
    seen = report(ubuntu, f"python3 -I -S -c {shlex.quote(REPORT)} one 'two words'")
    assert seen["ppid"] == server_pid(local_azure)
    assert seen["argv"] == ["-c", "one", "two words"]
    assert seen["cwd"] == str(local_azure.vms.live(ubuntu.id).home)
    assert seen["user"] == "azureuser" and seen["lang"] == "C.UTF-8"
    assert seen["isolated"] == 1 and seen["no_site"] == 1
    assert seen["ssl"] is True  # already imported: that is the point
    assert seen["emulator"] == []  # nothing of the emulator


def test_options_as_a_fresh_interpreter_reads_them(local_azure, ubuntu):
    for command, argv in ((f"python3 -IS -c {shlex.quote(REPORT)}", ["-c"]),
                          (f"python3 -SIc{shlex.quote(REPORT)} x", ["-c", "x"]),
                          (f"env -i LANG=C.UTF-8 python3 -I -S -c {shlex.quote(REPORT)}", ["-c"])):
        seen = report(ubuntu, command if "env -i" not in command else
                      command.replace("python3", "$(command -v python3)", 1))
        assert seen["argv"] == argv and seen["ppid"] == server_pid(local_azure), command


def test_environment_and_working_directory_reach_the_program_and_its_children(ubuntu):
    result = ubuntu.run("mkdir -p work && cd work && umask 027 && GREETING='hi there' "
                        "python3 -I -S -c 'import os, subprocess; print(oct(os.umask(0)), flush=True); "
                        "subprocess.run([\"sh\", \"-c\", \"echo $GREETING; pwd\"])'")
    assert result.exited == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "0o27"
    assert lines[1] == "hi there"
    assert lines[2].endswith("/home/azureuser/work")


def test_exit_codes_and_tracebacks_are_a_fresh_interpreters(ubuntu):
    assert ubuntu.run("python3 -I -S -c 'import sys; sys.exit(3)'").exited == 3
    assert ubuntu.run("python3 -I -S -c 'raise SystemExit'").exited == 0
    said = ubuntu.run("python3 -I -S -c 'import sys; sys.exit(\"no vault\")'")
    assert (said.exited, said.stderr) == (1, "no vault\n")
    crashed = ubuntu.run("python3 -I -S -c 'def f():\n    return 1/0\nf()'")
    assert crashed.exited == 1
    assert crashed.stderr.splitlines() == [
        "Traceback (most recent call last):",
        '  File "<string>", line 3, in <module>',
        '  File "<string>", line 2, in f',
        "ZeroDivisionError: division by zero"]
    broken = ubuntu.run("python3 -I -S -c 'x = ('")
    assert broken.exited == 1 and "SyntaxError" in broken.stderr
    assert "warmpython" not in crashed.stderr + broken.stderr


def test_killed_by_a_signal_as_a_shell_reports_it(ubuntu):
    result = ubuntu.run("python3 -I -S -c 'import os, signal; os.kill(os.getpid(), "
                        "signal.SIGTERM)'; echo status=$?")
    assert result.stdout == "status=143\n"


def test_program_and_input_from_stdin(local_azure, ubuntu):
    result = ubuntu.run("printf 'first\\nsecond\\n' | python3 -I -S -c "
                        "'import os, sys; print(os.getppid(), sys.stdin.read().split())'")
    assert result.stdout == f"{server_pid(local_azure)} ['first', 'second']\n"
    program = "import os, sys; print(os.getppid(), sys.argv, __file__)"
    result = ubuntu.run(f"echo {shlex.quote(program)} | python3 -I -S - arg")
    assert result.stdout == f"{server_pid(local_azure)} ['-', 'arg'] <stdin>\n"
    result = ubuntu.run(f"echo {shlex.quote(program)} | python3 -I -S")
    assert result.stdout == f"{server_pid(local_azure)} [''] <stdin>\n"


def test_a_script_path(local_azure, ubuntu):
    result = ubuntu.run("printf 'import os, sys\\nprint(os.getppid(), sys.argv, __file__)\\n' "
                        "> probe.py && python3 -I -S probe.py a b")
    home = local_azure.vms.live(ubuntu.id).home
    assert result.stdout == f"{server_pid(local_azure)} ['probe.py', 'a', 'b'] {home}/probe.py\n"
    missing = ubuntu.run("python3 -I -S nowhere.py")
    assert missing.exited == 2 and "can't open file" in missing.stderr


def test_what_the_fast_path_cannot_honour_runs_the_real_interpreter(local_azure, ubuntu):
    server = str(server_pid(local_azure))
    # Site packages (the emulator's interpreter: azure-identity importable), -m, other options.
    plain = ubuntu.run("python3 -c 'import os, sys; print(os.getppid(), sys.flags.no_site)'")
    assert plain.exited == 0 and plain.stdout.split()[1] == "0"
    assert plain.stdout.split()[0] != server
    module = ubuntu.run("echo '{\"a\": 1}' | python3 -I -S -m json.tool --compact")
    assert module.stdout == '{"a":1}\n'
    unbuffered = ubuntu.run("python3 -I -S -u -c 'import os; print(os.getppid())'")
    assert unbuffered.exited == 0 and unbuffered.stdout.strip() != server
    # A terminal: interactive use is the real interpreter's.
    with ubuntu.connect() as conn:
        tty = conn.run("python3 -I -S -c 'import os; print(os.getppid(), os.isatty(0))'",
                       hide=True, warn=True, pty=True, in_stream=False)
    parent, is_tty = tty.stdout.split()
    assert parent != server and is_tty == "True"


def test_a_client_that_goes_takes_its_program_along(local_azure, ubuntu):
    with ubuntu.connect() as conn:
        conn.open()
        channel = conn.client.get_transport().open_session()
        channel.exec_command("python3 -I -S -c 'import os, time; print(os.getpid(), os.getppid(), "
                             "flush=True); time.sleep(60)'")
        pid, parent = (int(n) for n in channel.makefile("r").readline().split())
        assert parent == server_pid(local_azure)
        assert alive(pid)
        channel.close()  # the SSH channel closes: sshd kills the command, the client with it
    assert wait_until(lambda: not alive(pid), timeout=10), "the warm child outlived its client"


@pytest.mark.parametrize("python3", ["python3", PROBE_PYTHON3])
def test_stopping_the_vm_ends_what_its_python_runs(local_azure, python3):
    if python3 == PROBE_PYTHON3 and local_azure.vms.warm_usr is None:
        pytest.skip("VMs have no /usr of their own here (not root, or MILAB_VM_NAMESPACES=0)")
    vm = make_vm(local_azure, name="warmstop")
    try:
        started = []

        def run():
            started.append(vm.run(f"{python3} -I -S -c 'import os, time; "
                                  "open(\"pid\", \"w\").write(str(os.getpid())); time.sleep(60)'"))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        pid_file = local_azure.vms.live(vm.id).home / "pid"
        assert wait_until(lambda: pid_file.exists() and pid_file.read_text(), timeout=10)
        pid = int(pid_file.read_text())
        assert alive(pid)
        vm.set_power("deallocated")
        assert wait_until(lambda: not alive(pid), timeout=10), "the VM stopped, its program ran on"
        thread.join(10)
    finally:
        vm.delete()


# -- VMs with their own /usr, /etc and /tmp (namespace.py, as root) ------------------------------
needs_namespaces = pytest.mark.skipif(
    not namespace.wanted(), reason="VMs get a private /usr, /etc and /tmp only as root (and not with MILAB_VM_NAMESPACES=0)")


@needs_namespaces
def test_the_probe_s_python3_is_warm_and_sees_the_vm_s_usr_and_tmp(local_azure, ubuntu):
    live = local_azure.vms.live(ubuntu.id)
    warm_usr = local_azure.vms.warm_usr
    assert live.namespace is not None and warm_usr is not None and warm_usr.ready()
    word = os.urandom(6).hex()
    here, usr_file = f"/tmp/milab-only-here-{word}", f"/usr/share/milab-only-here-{word}"
    planted = ubuntu.run(f"echo {word} > {here} && echo usr-{word} | sudo tee {usr_file} >/dev/null")
    assert planted.exited == 0, planted.stderr
    assert not os.path.exists(here) and not os.path.exists(usr_file)  # not the host's
    program = (f"import os, sys; print(os.getppid(), open({here!r}).read().strip(), "
               f"open({usr_file!r}).read().strip(), os.getcwd(), sys.executable, "
               "'ssl' in sys.modules)")
    try:
        probe = ubuntu.run(f"{PROBE_PYTHON3} -I -S -c {shlex.quote(program)}")
        assert probe.exited == 0, probe.stderr
        assert probe.stdout.split() == [str(warm_usr.proc.pid), word, f"usr-{word}",
                                        str(live.home), "/usr/bin/python3", "True"]
        # The program on stdin, as the probe sends it.
        piped = ubuntu.run(f"echo {shlex.quote(program)} | {PROBE_PYTHON3} -I -S "
                           "-c 'import sys; exec(sys.stdin.read())'")
        assert piped.stdout.split()[:3] == [str(warm_usr.proc.pid), word, f"usr-{word}"]
        # The PATH's python3 (the other server's client) sees the VM's files as well.
        path_run = ubuntu.run(f"python3 -I -S -c {shlex.quote(program)}")
        assert path_run.stdout.split()[:3] == [str(server_pid(local_azure)), word, f"usr-{word}"]
        # A script given by its absolute path, found in the VM's /tmp.
        script = ubuntu.run(f"echo {shlex.quote(program)} > {here}.py && "
                            f"{PROBE_PYTHON3} -I -S {here}.py")
        assert script.stdout.split()[:2] == [str(warm_usr.proc.pid), word], script.stderr
        # What the VM's /usr/bin/python3 falls back to: the real versioned binary.
        real = ubuntu.run(f"{PROBE_PYTHON3} -c 'import os, sys; print(os.getppid(), sys.flags.no_site)'")
        assert real.exited == 0 and real.stdout.split()[1] == "0"
        assert real.stdout.split()[0] != str(warm_usr.proc.pid)
    finally:
        ubuntu.run(f"rm -f {here} {here}.py; sudo rm -f {usr_file}")


@needs_namespaces
def test_a_vm_s_root_replaces_its_usr_bin_python3_and_it_stays_replaced(local_azure):
    vm = make_vm(local_azure, name="warmforged")
    try:
        fake = "#!/bin/sh\necho forged \"$@\"\n"
        done = vm.run(f"printf {shlex.quote(fake)} | sudo tee /usr/bin/python3 >/dev/null && "
                      f"{PROBE_PYTHON3} -I -S -c pass")
        assert (done.exited, done.stdout) == (0, "forged -I -S -c pass\n"), done.stderr
        vm.set_power("deallocated")
        vm.set_power("running")  # the client is not written over what the VM's root put there
        assert wait_until(lambda: vm.run(f"{PROBE_PYTHON3} -c 1").stdout == "forged -c 1\n",
                          timeout=10)
    finally:
        vm.delete()


def test_the_client_goes_into_an_upper_layer_over_nothing_but_its_own(tmp_path):
    layers = tmp_path / "layers"
    target = layers / "usr" / "upper" / "bin" / "python3"
    assert warmpython.install_in_usr(layers, "#!/bin/sh\necho one\n")
    assert target.read_text() == "#!/bin/sh\necho one\n" and os.access(target, os.X_OK)
    assert (layers / "usr" / "upper").stat().st_mode & 0o777 == 0o755
    assert warmpython.install_in_usr(layers, b"\x7fELF two")  # its own: replaced (restart)
    assert target.read_bytes() == b"\x7fELF two"
    target.write_text("#!/bin/sh\necho forged\n")  # the VM's root replaced it
    assert not warmpython.install_in_usr(layers, "#!/bin/sh\necho three\n")
    assert target.read_text() == "#!/bin/sh\necho forged\n"
    target.unlink()
    target.symlink_to("python3.11")  # ... or made it a link again
    assert not warmpython.install_in_usr(layers, "#!/bin/sh\necho three\n")
    assert target.is_symlink()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -- the server's reading of the options, without a VM ------------------------------------------
@pytest.mark.parametrize(("args", "expected"), [
    (["-I", "-S", "-c", "pass", "a"], ("c", "pass", ["-c", "a"])),
    (["-ISc", "pass"], ("c", "pass", ["-c"])),
    (["-IScpass", "x"], ("c", "pass", ["-c", "x"])),
    (["-I", "-S", "-E", "-s", "run.py", "-c"], ("script", "run.py", ["run.py", "-c"])),
    (["-I", "-S", "-", "x"], ("stdin", None, ["-", "x"])),
    (["-I", "-S"], ("stdin", None, [""])),
    (["-I", "-S", "--", "-weird.py"], ("script", "-weird.py", ["-weird.py"])),
    (["-I", "-c", "pass"], None),  # site packages: the real interpreter
    (["-S", "-c", "pass"], None),
    (["-I", "-S", "-m", "json.tool"], None),
    (["-I", "-S", "-u", "-c", "pass"], None),
    (["-I", "-S", "-X", "dev", "-c", "pass"], None),
    (["-I", "-S", "-c"], None),  # the real one says what is missing
    (["-c", "pass"], None),
])
def test_options_the_fast_path_takes(args, expected):
    assert warmpython_server.parse_argv(args) == expected


def test_locales_other_than_the_servers_fall_back():
    assert warmpython_server.locale_ok([b"LANG=C.UTF-8"])
    assert warmpython_server.locale_ok([b"LC_CTYPE=C.UTF-8", b"LANG=C"])
    assert not warmpython_server.locale_ok([b"LANG=en_US.ISO-8859-1"])
    assert not warmpython_server.locale_ok([b"LC_ALL=C", b"LANG=C.UTF-8"])


@pytest.fixture(scope="module")
def warm_alone(tmp_path_factory):
    """A warm interpreter without a local Azure, and its two clients."""
    tmp = tmp_path_factory.mktemp("warm")
    warm = WarmPython(tmp / "run")
    warm.start()
    assert warm.ready()
    clients = {"python": tmp / "python3-script"}
    clients["python"].write_text(warm.client_script("vm-alone"))
    if warm.native is not None:
        clients["native"] = tmp / "python3-native"
        clients["native"].write_bytes(warm.client("vm-alone"))
    for path in clients.values():
        path.chmod(0o755)
    yield warm, clients
    warm.stop()


@pytest.fixture(params=["python", "native"])
def client(request, warm_alone):
    warm, clients = warm_alone
    if request.param not in clients:
        pytest.skip("no C compiler here: only the Python client")
    return warm, str(clients[request.param])


def test_each_client_hands_over_argv_stdin_exit_codes_and_signals(client, tmp_path):
    warm, python3 = client
    env = {"LANG": "C.UTF-8", "PATH": "/usr/bin:/bin", "GREETING": "hi"}
    done = subprocess.run(
        [python3, "-I", "-S", "-c", "import os, sys; print(os.getppid(), sys.argv, "
         "os.environ['GREETING'], os.getcwd(), sys.stdin.read()); sys.exit(4)", "a b", ""],
        input="from stdin", capture_output=True, text=True, env=env, cwd=tmp_path, timeout=30)
    assert done.returncode == 4, done.stderr
    assert done.stdout == f"{warm.proc.pid} ['-c', 'a b', ''] hi {tmp_path} from stdin\n"
    killed = subprocess.run([python3, "-I", "-S", "-c", "import os; os.kill(os.getpid(), 9)"],
                            env=env, timeout=30)
    assert killed.returncode == -9  # the client ends by the same signal, as a shell sees it
    with open(tmp_path / "extra", "w") as extra:  # a descriptor beyond 0-2 is handed over too
        fd = extra.fileno()
        done = subprocess.run([python3, "-I", "-S", "-c", f"import os; os.write({fd}, b'on fd')"],
                              env=env, pass_fds=(fd,), stdin=subprocess.DEVNULL, timeout=30)
    assert done.returncode == 0
    assert (tmp_path / "extra").read_text() == "on fd"


def test_each_client_passes_a_signal_on_and_takes_its_program_down(client, tmp_path):
    warm, python3 = client
    env = {"LANG": "C.UTF-8", "PATH": "/usr/bin:/bin"}
    pid_file = tmp_path / "pid"
    program = (f"import os, signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: "
               f"sys.exit(7)); open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
               "time.sleep(60)")
    proc = subprocess.Popen([python3, "-I", "-S", "-c", program], env=env)
    assert wait_until(lambda: pid_file.exists() and pid_file.read_text(), timeout=10)
    proc.send_signal(15)  # handled by the program: its own exit code
    assert proc.wait(10) == 7
    pid_file.unlink()
    proc = subprocess.Popen([python3, "-I", "-S", "-c", program], env=env)
    assert wait_until(lambda: pid_file.exists() and pid_file.read_text(), timeout=10)
    child = int(pid_file.read_text())
    proc.kill()  # the client dies at once: its program must not run on
    proc.wait(10)
    assert wait_until(lambda: not alive(child), timeout=10)


def test_without_a_server_the_client_runs_the_real_interpreter(tmp_path):
    warm = WarmPython(tmp_path / "run")  # never started: nothing listens
    clients = [tmp_path / "python3"]
    clients[0].write_text(warm.client_script("vm-x"))
    native = warm._compile() if (tmp_path / "run").mkdir() is None else None
    if native is not None:
        warm.native = native
        clients.append(tmp_path / "python3-native")
        clients[1].write_bytes(warm.client("vm-x"))
    for path in clients:
        path.chmod(0o755)
        done = subprocess.run([str(path), "-I", "-S", "-c", "import sys; sys.exit(5)"],
                              capture_output=True, timeout=30)
        assert done.returncode == 5, done.stderr
    started = time.monotonic()
    warm.start()
    try:
        assert warm.ready()
        for path in clients:
            done = subprocess.run([str(path), "-I", "-S", "-c", "import os; print(os.getppid())"],
                                  capture_output=True, text=True, timeout=30)
            assert done.stdout.strip() == str(warm.proc.pid), done.stderr
    finally:
        warm.stop()
    assert time.monotonic() - started < 30
    assert not os.path.exists(warm.socket_path)


def test_what_the_probe_imports_on_its_first_tls_connection_is_already_loaded(client):
    """ssl encodes a server's name with the idna codec: the server has imported it (and looked
    it up) once, so no run of the probe pays for that import again."""
    _, python3 = client
    program = ("import sys; before = set(sys.modules); 'management.azure.com'.encode('idna'); "
               "import ssl; ssl.create_default_context()._encode_hostname('vault.azure.net'); "
               "print(sorted(set(sys.modules) - before))")
    done = subprocess.run([python3, "-I", "-S", "-c", program], capture_output=True, text=True,
                          env={"LANG": "C.UTF-8", "PATH": "/usr/bin:/bin"}, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n"


def test_a_program_run_again_is_compiled_once_and_still_behaves_as_a_fresh_one(client):
    """The server compiles a `-c` program it has seen before once for every later run: each run
    still prints, fails with the same traceback, and shows its compile-time warning or syntax
    error as a fresh interpreter does."""
    _, python3 = client
    env = {"LANG": "C.UTF-8", "PATH": "/usr/bin:/bin"}

    def run(program: str) -> subprocess.CompletedProcess:
        return subprocess.run([python3, "-I", "-S", "-c", program, "arg"], capture_output=True,
                              text=True, env=env, timeout=30)

    failing = "import sys\ndef f():\n    raise ValueError(sys.argv[1])\nprint('before')\nf()\n"
    warning = "x = 1\nprint(x is 1)\n"  # SyntaxWarning when compiled
    broken = "print('never'\n"
    for _ in range(4):
        done = run(failing)
        assert done.returncode == 1 and done.stdout == "before\n"
        assert done.stderr.splitlines()[1:] == [
            '  File "<string>", line 5, in <module>', '  File "<string>", line 3, in f',
            "ValueError: arg"], done.stderr
        done = run(warning)
        assert done.returncode == 0 and done.stdout == "True\n"
        assert "SyntaxWarning" in done.stderr
        done = run(broken)
        assert done.returncode == 1 and "SyntaxError" in done.stderr and done.stdout == ""
