"""Set-up as a new user meets it: the project's venv and its own interpreter, the pins in
one place, `make` running everything through the venv, the agent finding the venv's packages
without `site`; and the README held to what runs: its first two commands, its gcsctl help,
its gcsctl lines (each parsed and each command exercised by a test), its agent command lines
(run here, each ended by SIGTERM and SIGINT, the socket files they made removed)."""
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, installed_gcsctl, requires_root, user_env

README = os.path.join(ROOT, "README.md")
TESTS_OF_GCSCTL = ("test_gcsctl.py", "test_gcsctl_tty.py", "test_gcsctl_uvm.py", "test_demo.py")


def _readme() -> str:
    with open(README) as f:
        return f.read()


def sh_lines(text: str) -> list[str]:
    """The command lines of the README's sh blocks, comments dropped."""
    lines = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                lines.append(line)
    return lines


def _requirements() -> dict[str, str]:
    pins = {}
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if line:
                name, sep, version = line.partition("==")
                assert sep and version, f"requirements.txt: {line!r} is not pinned"
                pins[_norm(name)] = version
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- the venv -------------------------------------------------------------------------------

def test_dependencies_are_pinned_in_one_place():
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    named = project["dependencies"] + [d for deps in project["optional-dependencies"].values() for d in deps]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", d) for d in named), f"versions belong in requirements.txt: {named}"
    pins = _requirements()
    assert {_norm(d) for d in named} <= set(pins), pins
    assert project["scripts"]["gcsctl"] == "gcs.host.cli:main"


def test_tests_run_the_venvs_own_interpreter():
    assert sys.prefix != sys.base_prefix, f"not in a venv: {sys.executable} (make test runs .venv/bin/python)"
    assert "/shims/" not in sys.executable and "/shims/" not in os.path.realpath(sys.executable)
    with open(os.path.realpath(sys.executable), "rb") as f:
        assert f.read(4) == b"\x7fELF", "the interpreter itself, not a wrapper script"
    assert os.path.dirname(installed_gcsctl()) == os.path.dirname(sys.executable)


def test_the_agent_finds_the_venvs_packages_without_site():
    """The agent and the spawner start with -S and only PYTHONPATH=the repository."""
    code = ("from gcs.sitepaths import add_site_packages; add_site_packages(); "
            "import msgpack, prctl, pyroute2; print(msgpack.__file__, prctl.__file__, pyroute2.__file__)")
    r = subprocess.run([sys.executable, "-S", "-c", code], env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert all(path.startswith(sys.prefix + "/") for path in r.stdout.split()), (r.stdout, sys.prefix)


def test_make_runs_everything_through_the_venv():
    env = {k: v for k, v in user_env().items() if k not in ("PYTHON", "VENV", "MAKEFLAGS", "MFLAGS")}
    r = subprocess.run(["make", "-n", "run", "test", "bench", "deps"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert ".venv/bin/gcsctl demo\n" in r.stdout
    assert ".venv/bin/python -m pytest -q -p no:cacheprovider tests\n" in r.stdout
    assert ".venv/bin/python -m bench\n" in r.stdout
    base = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else ""
    assert f'bash scripts/deps.sh "{base}" ".venv"' in r.stdout, r.stdout


def test_set_up_is_quick_and_changes_nothing_once_done():
    try:
        with open(os.path.join(sys.prefix, ".pygcs-deps")) as f:
            base = f.read().split()[0].removeprefix("base=")
    except OSError:
        pytest.skip(f"{sys.prefix} was not made by scripts/deps.sh")
    before = os.stat(os.path.join(sys.prefix, "pyvenv.cfg")).st_mtime_ns
    t0 = time.monotonic()
    r = subprocess.run(["bash", "scripts/deps.sh", base, sys.prefix], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert time.monotonic() - t0 < 5
    assert os.stat(os.path.join(sys.prefix, "pyvenv.cfg")).st_mtime_ns == before


def test_set_up_names_a_python_it_cannot_use(tmp_path):
    r = subprocess.run(["bash", "scripts/deps.sh", "/nonexistent/python3", str(tmp_path / "v")], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr) == (1, "deps: /nonexistent/python3 does not run\n")
    old = tmp_path / "python3"
    old.write_text('#!/bin/sh\ncase "$2" in *realpath*) echo "$0";; *platform*) echo 3.9.2;; *) exit 1;; esac\n')
    old.chmod(0o755)
    r = subprocess.run(["bash", "scripts/deps.sh", str(old), str(tmp_path / "v")], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and r.stderr == f"deps: {old} is Python 3.9.2; pygcs needs 3.11+ (PYTHON=...)\n"
    assert not os.path.exists(tmp_path / "v")


# --- the README -----------------------------------------------------------------------------

def test_readme_starts_with_make_run_and_make_test():
    first = _readme().splitlines()[:4]
    assert first[0] == "```sh" and first[1].startswith("make run ") and first[2].startswith("make test ")
    with open(os.path.join(ROOT, "Makefile")) as f:
        targets = re.findall(r"^(\w+):", f.read(), re.M)
    assert {"run", "test", "deps"} <= set(targets)


@pytest.mark.skipif(sys.version_info[:2] not in ((3, 11), (3, 12)), reason="argparse words help differently")
def test_readme_shows_gcsctls_own_help():
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import readme_help
    finally:
        sys.path.pop(0)
    assert readme_help.current() == readme_help.section(), "run: .venv/bin/python scripts/readme_help.py --write"


def readme_gcsctl_lines() -> list[list[str]]:
    """Each gcsctl command line of the README as argv (after a pipe into it, say)."""
    found = []
    for line in sh_lines(_readme()):
        for part in line.split("|"):
            argv = [re.sub(r"^\[(.+)\]$", r"\1", a) for a in shlex.split(part)]  # "[-f]": an option, given
            if argv[:1] == ["gcsctl"]:
                found.append(argv[1:])
    return found


def test_readme_gcsctl_lines_parse_and_each_command_is_tested():
    from gcs.host.cli import build_parser, command_names
    lines = readme_gcsctl_lines()
    assert len(lines) >= 15, lines
    used = set()
    for argv in lines:
        if argv == ["--help"]:
            continue  # test_gcsctl.py's help test runs it
        args = build_parser().parse_args(argv)  # exits 2 (failing the test) on a stale line
        used.add(args.cmd)
    assert used <= set(command_names())
    tests = ""
    for name in TESTS_OF_GCSCTL:
        with open(os.path.join(ROOT, "tests", name)) as f:
            tests += f.read()
    untested = [cmd for cmd in sorted(used) if f'"{cmd}"' not in tests and f"'{cmd}'" not in tests]
    assert not untested, f"README commands no test runs: {untested}"


# --- the README's agent command lines ---------------------------------------------------------

def readme_agent_lines() -> list[list[str]]:
    return [shlex.split(line) for line in sh_lines(_readme()) if line.startswith("python3 -S -m gcs ")]


def test_readme_agent_lines_are_the_ones_run_here():
    lines = readme_agent_lines()
    assert [argv for argv in lines if "vsock" in argv and "--local" not in argv], "the in-VM line"
    assert len([argv for argv in lines if "--local" in argv]) == 3, lines


class Agent:
    """A README agent line run as a user runs it from the repository root (the venv's python3)."""

    def __init__(self, argv: list[str], vsock: str, **popen) -> None:
        argv = [sys.executable if a == "python3" else a.replace("/tmp/uvm/vsock", vsock) for a in argv]
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=user_env(), stderr=subprocess.PIPE, **popen)

    def end(self, signum: int, timeout: float = 10) -> int:
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the agent did not end on signal {signum}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:  # the local-mode agent is the supervisor's child: it goes first
                with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                    for pid in f.read().split():
                        os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                pass
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _line(flag: str) -> list[str]:
    lines = [argv for argv in readme_agent_lines() if "--local" in argv]
    if flag:
        return next(argv for argv in lines if flag in argv)
    return next(argv for argv in lines if "--bridge-stdio" not in argv and "--bridge-listen" not in argv)


def _negotiate(bridge) -> None:
    try:
        bridge.negotiate()
    finally:
        bridge.close()


SIGNALS = pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])


@requires_root
@SIGNALS
def test_readme_agent_dialling_the_host(tmp_path, signum):
    from gcs.host.bridge_client import HostBridge
    from gcs.protocol.ids import BRIDGE_PORT
    from vmbus.hybrid import host_listen, port_path

    vsock = str(tmp_path / "vsock")
    listener = host_listen(vsock, BRIDGE_PORT)
    agent = Agent(_line(""), vsock)
    try:
        listener.settimeout(20)
        conn, _ = listener.accept()
        _negotiate(HostBridge.over_socket(conn))
        assert agent.end(signum) == 0
    finally:
        agent.kill()
        listener.close()
        os.unlink(port_path(vsock, BRIDGE_PORT))


@requires_root
@SIGNALS
def test_readme_agent_over_stdio(tmp_path, signum):
    from gcs.host.bridge_client import HostBridge

    agent = Agent(_line("--bridge-stdio"), str(tmp_path / "vsock"), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        bridge = HostBridge(agent.proc.stdout.fileno(), agent.proc.stdin.fileno())
        bridge.negotiate()
        assert agent.end(signum) == 0
    finally:
        agent.kill()


@requires_root
@SIGNALS
@pytest.mark.parametrize("connected", [False, True], ids=["waiting", "connected"])
def test_readme_agent_listening_ends_on_signals_and_removes_its_socket(tmp_path, signum, connected):
    """--bridge-listen: a signal ends the agent whether a host is connected or not, and the
    socket file it made is gone."""
    from gcs.host.bridge_client import HostBridge
    from vmbus.hybrid import host_connect

    vsock = str(tmp_path / "vsock")
    argv = _line("--bridge-listen")
    port = int(argv[argv.index("--bridge-listen") + 1])
    agent = Agent(argv, vsock)
    try:
        if connected:
            bridge = HostBridge.over_socket(host_connect(vsock, port, timeout=20))
            bridge.negotiate()
        else:
            deadline = time.monotonic() + 20
            while not os.path.exists(vsock):
                assert time.monotonic() < deadline and agent.proc.poll() is None, "the agent never listened"
                time.sleep(0.02)
            time.sleep(0.3)  # in its accept
        assert agent.end(signum) == 0
        assert not os.path.exists(vsock)
        if connected:
            bridge.close()
    finally:
        agent.kill()
