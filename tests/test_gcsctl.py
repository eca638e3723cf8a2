"""gcsctl against a real local-mode agent: start, exec, ps, stacks, console (real pty), shutdown;
the installed console script, run the way a user runs it."""
import os
import pty
import select
import subprocess
import time

import pytest

from conftest import installed_gcsctl, requires_root, user_env

pytestmark = requires_root


def gcsctl(uvm_dir, *args, **kw):
    kw.setdefault("timeout", 60)
    return subprocess.run([installed_gcsctl(), "--uvm", uvm_dir, *args], env=user_env(), capture_output=True, **kw)


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
    sleeper = subprocess.Popen([installed_gcsctl(), "--uvm", started, "exec", "--", "sleep", "2"],
                               env=user_env(), stdout=subprocess.DEVNULL)
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
    gcsctl_path = installed_gcsctl()
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(gcsctl_path, [gcsctl_path, "--uvm", started, "console"], user_env())
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


def _one_line_error(r, prefix):
    """gcsctl's errors: non-zero, one line on stderr naming the command, no traceback."""
    assert r.returncode != 0, r
    assert r.stderr.count(b"\n") == 1 and r.stderr.startswith(prefix), r.stderr
    assert b"Traceback" not in r.stderr


def test_exec_exit_codes_like_docker_exec(started):
    r = gcsctl(started, "exec", "--", "/nonexistent")
    assert r.returncode == 127, r
    _one_line_error(r, b"gcsctl exec: ")
    assert b"/nonexistent" in r.stderr and b"HRESULT" not in r.stderr
    r = gcsctl(started, "exec", "--", "no-such-program")
    assert r.returncode == 127 and b"no-such-program" in r.stderr, r
    r = gcsctl(started, "exec", "--", "/etc/passwd")  # there, but not executable
    assert r.returncode == 126, r
    _one_line_error(r, b"gcsctl exec: ")
    r = gcsctl(started, "exec", "-w", "/no/such/dir", "--", "true")
    assert r.returncode == 126 and b"/no/such/dir" in r.stderr, r
    r = gcsctl(started, "exec", "--", "sh", "-c", "kill -KILL $$")
    assert (r.returncode, r.stderr) == (128 + 9, b""), r


def test_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, started):
    missing = str(tmp_path / "nonexistent")
    r = gcsctl(started, "image", "layer", str(tmp_path / "out.img"), missing)
    _one_line_error(r, b"gcsctl image: ")
    assert missing.encode() in r.stderr and not os.path.exists(tmp_path / "out.img")
    r = gcsctl(started, "--debug", "image", "scratch", str(tmp_path / "no" / "dir" / "s.img"), "--size", "1M")
    assert r.returncode == 1 and b"Traceback" in r.stderr
    assert r.stderr.splitlines()[-1].startswith(b"gcsctl image: ") and b"No such file or directory" in r.stderr
    for args, prefix in ((["exec"], b"gcsctl exec: "), (["hotremove", "zero"], b"gcsctl hotremove: "),
                         (["image", "layer", str(tmp_path / "x.img")], b"gcsctl image: ")):
        r = gcsctl(started, *args)
        assert r.returncode == 2, r
        _one_line_error(r, prefix)
    r = gcsctl(started, "ps", "--no-such-option")  # argparse's own usage errors too
    assert r.returncode == 2 and b"--no-such-option" in r.stderr
    _one_line_error(r, b"gcsctl ps: ")


def test_output_reader_going_away_ends_the_process(started):
    """`gcsctl exec -- yes | head`: the process gets SIGPIPE as a local one would; nothing
    hangs, nothing is left running, no traceback."""
    r = subprocess.run(["bash", "-c", f"'{installed_gcsctl()}' --uvm '{started}' exec -- yes | head -n 2; "
                                      "echo \"status ${PIPESTATUS[0]}\" >&2"],
                       env=user_env(), capture_output=True, timeout=30)
    assert r.stdout == b"y\ny\n" and r.stderr == b"status 141\n", r
    assert "yes" not in ps_commands(started)


def ps_commands(uvm_dir):
    """The CMD column of `gcsctl ps`."""
    r = gcsctl(uvm_dir, "ps")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    start = lines[0].index("CMD")
    return [line[start:] for line in lines[1:]]


def test_help_of_every_command_has_an_example(tmp_path):
    from gcs.host.cli import command_names
    r = gcsctl(str(tmp_path), "--help")
    assert r.returncode == 0 and b"examples:" in r.stdout
    commands = command_names()
    assert {"start", "exec", "console", "ps", "stacks", "shutdown", "image", "up", "run", "down"} <= set(commands)
    for name in commands:
        r = gcsctl(str(tmp_path), name, "--help")
        assert r.returncode == 0 and r.stdout.startswith(b"usage: gcsctl " + name.encode()), r
        assert b"\nexamples:\n  " in r.stdout and b"gcsctl" in r.stdout.split(b"examples:")[1], name


def test_layer_conversion_shows_progress_as_lines_off_a_terminal(tmp_path):
    import tarfile
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(4 << 20))
    with tarfile.open(tmp_path / "layer.tar", "w") as tar:
        tar.add(src, arcname=".")
    r = gcsctl(str(tmp_path), "image", "layer", str(tmp_path / "l.img"), str(tmp_path / "layer.tar"))
    assert r.returncode == 0, r.stderr
    lines = r.stderr.decode().splitlines()
    assert lines[0].startswith(f"unpacking {tmp_path}/layer.tar (") and "MiB" in lines[0], lines
    assert any("%" in line for line in lines) and lines[-1].startswith(f"writing {tmp_path}/l.img"), lines
    assert "\r" not in r.stderr.decode() and "\x1b" not in r.stderr.decode()


def test_a_request_on_a_closed_bridge_fails_at_once():
    """Not a wait for a reply that can no longer come: the broker's race when the agent
    restarts in the UVM (a client's request sent into the old connection hung gcsctl)."""
    import socket

    from gcs.host.bridge_client import BridgeClosed, HostBridge
    from gcs.protocol.ids import RequestId
    ours, agent = socket.socketpair()
    bridge = HostBridge.over_socket(ours)
    agent.close()
    try:
        assert bridge.closed.wait(5)
        with pytest.raises(BridgeClosed):
            bridge.call_raw(RequestId.START, {}, timeout=None)
    finally:
        ours.close()
