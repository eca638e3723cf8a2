"""gcsctl as people run it, against a QEMU UVM: up, run (pipes, stdin, a tty), exec, console
over a real pty with a window resize, ps, stacks, logs, hotadd/hotremove, down; and `up
--external`, which leaves the bridge to another host implementation."""
import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import termios
import time

import pytest

from gcs.host.bridge_client import HostBridge
from gcs.host.oci import write_image
from gcs.host.processes import ProcessClient
from gcs.host.samples import busybox_rootfs
from gcs.protocol.ids import BRIDGE_PORT
from vmbus.hybrid import host_listen, port_path

from conftest import installed_gcsctl, user_env
from test_gcsctl import _expect, _read_rest
from uvm_env import IMAGE_DIR, blank_disk, build_image, requires_qemu

pytestmark = requires_qemu


def gcsctl(uvm_dir, *args, timeout=240, **kw):
    return subprocess.run([installed_gcsctl(), "--uvm", uvm_dir, *args], env=cli_env(),
                          capture_output=True, timeout=timeout, **kw)


def cli_env():
    return user_env(GCSCTL_CACHE=CACHE[0])


CACHE = [""]


def qemu_gone(uvm_dir):
    state = json.load(open(os.path.join(uvm_dir, "uvm.json")))
    return not os.path.exists(f"/proc/{state['qemu_pid']}")


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    build_image()
    base = tmp_path_factory.mktemp("gcsctl")
    CACHE[0] = str(base / "cache")
    uvm_dir = str(base / "uvm")
    r = gcsctl(uvm_dir, "up", "--image", IMAGE_DIR)
    assert r.returncode == 0 and b"UVM up in" in r.stdout, r.stderr
    try:
        yield uvm_dir
    finally:
        pid_file = os.path.join(uvm_dir, "broker.pid")
        if os.path.exists(pid_file):
            gcsctl(uvm_dir, "down", "--force")
        assert qemu_gone(uvm_dir)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    busybox_rootfs(str(d / "rootfs"))
    write_image(str(d / "busybox.tar"), [str(d / "rootfs")], {"Env": ["PATH=/bin"], "Cmd": ["sh"]}, fmt="docker")
    return str(d / "busybox.tar")


def on_pty(argv, rows=24, cols=80):
    """argv on a new pty of the given size; returns (pid, master fd)."""
    path, env = installed_gcsctl(), cli_env()
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(path, [path, *argv], env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    return pid, fd


def finish(pid, fd):
    try:
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)
    finally:
        os.close(fd)


def test_run_like_docker_run(up, image):
    r = gcsctl(up, "run", image, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout) == (3, b"out\n") and r.stderr.endswith(b"\nerr\n"), r.stderr
    progress = r.stderr.decode().splitlines()[:-1]  # the layer's conversion, the first time
    assert progress[0].startswith("unpacking layer ") and progress[-1].startswith("writing the ext4 image of layer ")
    assert all(line.startswith(("unpacking layer ", "writing the ext4 image")) for line in progress), progress
    r = gcsctl(up, "run", "-q", image, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, b"out\n", b"err\n")
    r = gcsctl(up, "run", "-i", "-e", "WHO=world", image, "--", "sh", "-c", "tr a-z A-Z; echo $WHO",
               input=b"hello\n")
    assert (r.returncode, r.stdout) == (0, b"HELLO\nworld\n"), r.stderr
    r = gcsctl(up, "run", image, "--", "/no/such/program")
    assert r.returncode == 125 and b"gcsctl run:" in r.stderr and b"/no/such/program" in r.stderr
    r = gcsctl(up, "run", up + "/no-such-image", "--", "true")
    assert r.returncode == 125 and b"no such file" in r.stderr


def test_run_with_a_tty(up, image):
    pid, fd = on_pty(["--uvm", up, "run", "-t", "-i", image, "--", "sh", "-c", "stty size; tty; exit 9"], 31, 97)
    out = _read_rest(fd, timeout=60)
    assert finish(pid, fd) == 9
    assert b"31 97" in out and b"/dev/pts/0" in out


def test_console_follows_the_window_size(up):
    pid, fd = on_pty(["--uvm", up, "console"], 40, 120)
    try:
        _expect(fd, b"uvm# ", timeout=60)
        os.write(fd, b"stty size\n")
        _expect(fd, b"40 120")
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 132, 0, 0))
        os.kill(pid, signal.SIGWINCH)
        time.sleep(1)
        os.write(fd, b"stty size; exit 5\n")
        out = _expect(fd, b"50 132") + _read_rest(fd)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    assert finish(pid, fd) == 5, out


def test_exec_ps_stacks_logs(up):
    r = gcsctl(up, "exec", "--", "sh", "-c", "grep -c ' /run/layers/' /proc/mounts; exit 2")
    assert r.returncode == 2 and r.stdout == b"0\n"  # every container's layers were unmounted
    r = gcsctl(up, "ps")
    assert r.returncode == 0 and re.search(rb"python3.11 -SE /bin/gcs -v4", r.stdout) and b"/init" in r.stdout
    r = gcsctl(up, "stacks")
    assert r.returncode == 0 and b"thread MainThread" in r.stdout
    r = gcsctl(up, "logs")
    assert r.returncode == 0 and re.search(rb"^\d\d:\d\d:\d\d\.\d{3} INFO gcs started", r.stdout, re.M)


def test_ps_of_one_container(up, image):
    """`gcsctl ps --container ID`: that container's processes (its own ps), a container
    named with `run --name`; the UVM's ps shows them among the rest."""
    run = subprocess.Popen([installed_gcsctl(), "--uvm", up, "run", "--name", "pstest", image, "--", "sleep", "300"],
                           env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            r = gcsctl(up, "ps", "--container", "pstest")
            if r.returncode == 0:
                break
            assert run.poll() is None and time.monotonic() < deadline, (r.stderr, run.poll())
            time.sleep(0.5)
        lines = r.stdout.decode().splitlines()
        assert lines[0].split() == ["UID", "PID", "PPID", "STAT", "TTY", "RSS", "CMD"], lines
        rows = [line.split(None, 6) for line in lines[1:]]
        assert ["1", "sleep 300"] == [rows[0][1], rows[0][6]], lines  # pid 1 of its own namespace
        assert not any("/bin/gcs" in row[6] for row in rows), lines
        r = gcsctl(up, "ps")
        assert b" sleep 300\n" in r.stdout and re.search(rb"python3.11 -SE /bin/gcs -v4", r.stdout)
    finally:
        run.send_signal(signal.SIGTERM)  # passed on to the init, killed when it does not exit
        try:
            code = run.wait(120)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
            raise
    assert code in (128 + signal.SIGTERM, 128 + signal.SIGKILL), run.stderr.read()
    r = gcsctl(up, "ps", "--container", "pstest")
    assert r.returncode != 0 and r.stderr.count(b"\n") == 1 and r.stderr.startswith(b"gcsctl ps: "), r.stderr


def test_hotadd_and_hotremove_a_scsi_disk(up, tmp_path):
    disk = blank_disk(tmp_path / "disk.img", 64 << 20)
    r = gcsctl(up, "hotadd", "scsi", disk)
    assert r.returncode == 0, r.stderr
    lun = int(re.search(rb"Lun (\d+)", r.stdout).group(1))

    def guest_luns():
        out = gcsctl(up, "exec", "--", "ls", "/sys/bus/scsi/devices").stdout.decode()
        return [name for name in out.split() if name.endswith(f":0:0:{lun}")]

    deadline = time.monotonic() + 30
    while not guest_luns():
        assert time.monotonic() < deadline, "the guest never saw the hot-added disk"
        time.sleep(0.5)
    r = gcsctl(up, "hotremove", f"0:{lun}")
    assert r.returncode == 0, r.stderr
    assert not guest_luns()
    r = gcsctl(up, "hotadd", "pmem", str(tmp_path / "missing.img"))
    assert r.returncode != 0 and b"missing.img" in r.stderr


def test_agent_killed_from_the_console_comes_back(up, image):
    """kill -9 of the agent from `gcsctl console`: init starts it again, the broker takes its
    new connection, and the next `gcsctl run` works."""
    pid, fd = on_pty(["--uvm", up, "console"])
    try:
        _expect(fd, b"uvm# ", timeout=60)
        os.write(fd, b"kill -9 $(ps -o pid,args | grep 'SE /bin/gc[s]' | awk '{print $1}')\n")
        _read_rest(fd, timeout=20)  # the console ends with the agent that held its pty
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    finish(pid, fd)
    r = gcsctl(up, "run", image, "--", "sh", "-c", "echo back")
    assert (r.returncode, r.stdout) == (0, b"back\n"), r.stderr
    assert "agent reconnected" in open(os.path.join(up, "broker.log")).read()
    assert re.search(r"killed by signal 9; restart 1 in", open(os.path.join(up, "console.log")).read())


def test_down(up):
    r = gcsctl(up, "down")
    assert r.returncode == 0 and b"UVM down" in r.stdout, r.stderr
    assert qemu_gone(up) and not os.path.exists(os.path.join(up, "broker.pid"))
    r = gcsctl(up, "ps")
    assert r.returncode != 0 and b"no UVM" in r.stderr


def test_external_host_drives_the_agent(tmp_path):
    """`up --external`: the VM boots and the agent dials the bridge path; any host that listens
    there (here this test, with the project's host code) drives it unchanged."""
    build_image()
    uvm_dir = str(tmp_path / "uvm")
    r = gcsctl(uvm_dir, "up", "--external", "--image", IMAGE_DIR)
    assert r.returncode == 0 and b"outside host" in r.stdout, r.stderr
    vsock = os.path.join(uvm_dir, "vsock")
    listener = host_listen(vsock, BRIDGE_PORT)
    try:
        listener.settimeout(120)
        conn, _ = listener.accept()
        bridge = HostBridge.over_socket(conn)
        bridge.negotiate()
        out, err, code = ProcessClient(bridge, vsock).run(["sh", "-c", "echo driven from outside; exit 4"])
        assert (out, code) == (b"driven from outside\n", 4)
        bridge.close()
    finally:
        listener.close()
        os.unlink(port_path(vsock, BRIDGE_PORT))
        r = gcsctl(uvm_dir, "down")
    assert r.returncode == 0 and qemu_gone(uvm_dir), r.stderr
