"""gcsctl against a real local-mode agent: start, exec, ps, stacks, console (real pty), shutdown."""
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from gcs.host.launcher import agent_env

from conftest import requires_root

pytestmark = requires_root


def gcsctl(uvm_dir, *args, **kw):
    return subprocess.run([sys.executable, "-m", "gcs.host.cli", "--uvm", uvm_dir, *args],
                          env=agent_env(), capture_output=True, timeout=60, **kw)


@pytest.fixture
def started(tmp_path):
    uvm_dir = str(tmp_path / "uvm")
    r = gcsctl(uvm_dir, "start")
    assert r.returncode == 0, r.stderr
    pid = int(open(os.path.join(uvm_dir, "broker.pid")).read())
    try:
        yield uvm_dir
    finally:
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, 15)
            deadline = time.monotonic() + 10
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                time.sleep(0.02)


def test_exec_ps_stacks_shutdown(started):
    r = gcsctl(started, "exec", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, b"out\n", b"err\n")
    r = gcsctl(started, "exec", "-i", "-e", "X=42", "--", "sh", "-c", "cat; echo $X", input=b"piped\n")
    assert r.stdout == b"piped\n42\n"
    sleeper = subprocess.Popen([sys.executable, "-m", "gcs.host.cli", "--uvm", started, "exec", "--", "sleep", "2"],
                               env=agent_env(), stdout=subprocess.DEVNULL)
    time.sleep(0.8)
    r = gcsctl(started, "ps")
    assert r.returncode == 0 and b"sleep 2" in r.stdout and b"PID" in r.stdout
    r = gcsctl(started, "stacks")
    assert r.returncode == 0 and b"uvm_processes:" in r.stdout
    assert sleeper.wait(20) == 0
    r = gcsctl(started, "shutdown")
    assert r.returncode == 0 and b"shut down" in r.stdout, r.stderr
    assert not os.path.exists(os.path.join(started, "broker.pid"))


def test_console_over_a_real_pty(started):
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(agent_env())
        os.execv(sys.executable, [sys.executable, "-m", "gcs.host.cli", "--uvm", started, "console"])
    try:
        out = _expect(fd, b"uvm# ")
        os.write(fd, b"stty size; echo $((6*7)); tty\n")
        out = _expect(fd, b"42")
        os.write(fd, b"exit 5\n")
        out += _read_rest(fd)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 5
        assert b"/dev/pts/" in out
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


def _expect(fd, token, timeout=20):
    buf = b""
    deadline = time.monotonic() + timeout
    while token not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"did not see {token!r} in {buf!r}")
        if select.select([fd], [], [], left)[0]:
            try:
                buf += os.read(fd, 4096)
            except OSError:
                break
    return buf


def _read_rest(fd, timeout=10):
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def test_commands_fail_clearly_without_an_agent(tmp_path):
    r = gcsctl(str(tmp_path / "none"), "ps")
    assert r.returncode != 0 and b"no UVM" in r.stderr


def test_image_commands_build_mountable_ext4(tmp_path):
    import tarfile
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hello").write_text("hi\n")
    tar_path = tmp_path / "layer.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(src, arcname=".")
    for source in (str(src), str(tar_path)):
        out = tmp_path / "layer.img"
        r = gcsctl(str(tmp_path), "image", "layer", str(out), source)
        assert r.returncode == 0, r.stderr
        dump = subprocess.run(["debugfs", "-R", "cat /etc/hello", str(out)], capture_output=True, text=True)
        assert dump.stdout == "hi\n"
        features = subprocess.run(["dumpe2fs", "-h", str(out)], capture_output=True, text=True).stdout
        assert "Block size:               4096" in features
        assert "has_journal" not in features and "inline_data" not in features
    r = gcsctl(str(tmp_path), "image", "scratch", str(tmp_path / "s.img"), "--size", "32M")
    assert r.returncode == 0 and os.path.getsize(tmp_path / "s.img") == 32 << 20
    assert subprocess.run(["e2fsck", "-n", str(tmp_path / "s.img")], capture_output=True).returncode == 0
