"""gcsctl where a terminal matters, on real ptys (the `pty` module) against a local-mode
agent: console and `exec -t` end cleanly with the terminal restored, `-t` without `-i`
never reads stdin, the end of stdin reaches the process, signals to gcsctl reach the
process (nothing is left running in the UVM), and `ps` shows every process like `ps -ef`."""
import os
import pty
import re
import select
import shlex
import signal
import time

import pytest

from conftest import installed_gcsctl, requires_root, user_env
from test_gcsctl import gcsctl, ps_commands, started  # noqa: F401,F811 - the fixture

pytestmark = requires_root


class Pty:
    """A shell command on a new pty; everything it writes is collected from the master."""

    def __init__(self, command: str) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execve("/bin/sh", ["sh", "-c", command], user_env())
        self.out = b""
        self.status = None

    def expect(self, token: bytes, timeout: float = 20) -> bytes:
        deadline = time.monotonic() + timeout
        while token not in self.out:
            if not self._read(deadline - time.monotonic()):
                raise AssertionError(f"did not see {token!r} in {self.out!r}")
        return self.out

    def child(self) -> int:
        """The gcsctl the shell runs in the foreground (the shell itself when it exec'd it)."""
        with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
            kids = f.read().split()
        return int(kids[0]) if kids else self.pid

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def finish(self, timeout: float = 20) -> int:
        """Read to the end and reap; a process still running at `timeout` fails the test."""
        deadline = time.monotonic() + timeout
        while self._read(deadline - time.monotonic()):
            pass
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
            time.sleep(0.02)
        raise AssertionError(f"still running after {timeout} s; it wrote {self.out!r}")

    def _read(self, left: float) -> bool:
        if left <= 0 or not select.select([self.fd], [], [], left)[0]:
            return False
        try:
            chunk = os.read(self.fd, 4096)
        except OSError:  # EIO: every slave fd closed
            return False
        self.out += chunk
        return bool(chunk)

    def close(self) -> None:
        if self.fd < 0:
            return
        if self.status is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)  # the pty's session: sh and gcsctl
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
        os.close(self.fd)
        self.fd = -1


@pytest.fixture
def on_pty():
    ptys = []

    def start(command: str) -> Pty:
        ptys.append(Pty(command))
        return ptys[-1]
    yield start
    for p in ptys:
        p.close()


def cli(uvm_dir: str, *args: str) -> str:
    return " ".join(shlex.quote(a) for a in (installed_gcsctl(), "--uvm", uvm_dir, *args))


def assert_clean(out: bytes) -> None:
    assert b"Traceback" not in out and b"Error" not in out, out


def test_console_exit_is_clean_and_restores_the_terminal(started, on_pty):
    p = on_pty(f"stty -g; {cli(started, 'console')}; echo \"rc=$?\"; stty -g")
    p.expect(b"uvm# ")
    p.write(b"echo $((6*7)); exit 5\n")
    assert p.finish() == 0
    assert b"42" in p.out and b"rc=5" in p.out, p.out
    assert_clean(p.out)
    before, after = re.findall(rb"^([0-9a-f:]{30,})\r?$", p.out, re.M)
    assert before == after


def test_exec_tty_exit_is_clean(started, on_pty):
    p = on_pty(f"{cli(started, 'exec', '-t', '--', 'sh', '-c', 'tty; exit 3')}; echo \"rc=$?\"")
    assert p.finish() == 0
    assert b"/dev/pts/" in p.out and b"rc=3" in p.out, p.out
    assert_clean(p.out)


def test_tty_without_i_does_not_read_stdin(started, on_pty):
    """`echo hi | gcsctl exec -t -- cat` returns: stdin is not read, the terminal's input ends."""
    p = on_pty(f"echo hi | {cli(started, 'exec', '-t', '--', 'cat')}; echo \"rc=$?\"")
    assert p.finish() == 0
    assert b"rc=0" in p.out and b"hi" not in p.out, p.out
    assert_clean(p.out)
    assert "cat" not in ps_commands(started)


def test_end_of_stdin_reaches_a_tty_process(started, on_pty):
    p = on_pty(f"printf 'one\\ntwo' | {cli(started, 'exec', '-i', '-t', '--', 'cat')}; echo \"rc=$?\"")
    assert p.finish() == 0
    assert b"rc=0" in p.out and p.out.count(b"one") >= 1 and b"two" in p.out, p.out
    assert "cat" not in ps_commands(started)


@pytest.mark.parametrize("tty", [False, True], ids=["pipes", "tty"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signals_to_gcsctl_end_the_process(started, on_pty, tty, signum):
    flags = ["-t"] if tty else []
    p = on_pty(f"{cli(started, 'exec', *flags, '--', 'sleep', '321')}; echo \"rc=$?\"")
    deadline = time.monotonic() + 20
    while "sleep 321" not in ps_commands(started):
        assert time.monotonic() < deadline, "the process never started"
        time.sleep(0.1)
    os.kill(p.child(), signum)  # as `kill` or ^C on a terminal not in raw mode would
    assert p.finish() == 0
    assert f"rc={128 + signum}".encode() in p.out, p.out
    assert_clean(p.out)
    assert "sleep 321" not in ps_commands(started)


def test_ps_shows_every_process_like_ps_ef(started, on_pty):
    console = on_pty(cli(started, "console"))
    console.expect(b"uvm# ")
    tty_exec = on_pty(cli(started, "exec", "-t", "--", "sleep", "123"))
    deadline = time.monotonic() + 20
    while "sleep 123" not in ps_commands(started):
        assert time.monotonic() < deadline, "exec -t never started"
        time.sleep(0.1)
    r = gcsctl(started, "ps")
    lines = r.stdout.decode().splitlines()
    assert lines[0].split() == ["UID", "PID", "PPID", "STAT", "TTY", "RSS", "CMD"], lines
    rows = {line.split(None, 6)[6]: line.split(None, 6) for line in lines[1:]}
    assert rows["/bin/sh -i"][4].startswith("pts/") and rows["sleep 123"][4].startswith("pts/"), lines
    assert any(cmd.endswith("-m gcs --local --exit-with-parent --transport hybrid:" + started + "/vsock -loglevel info")
               for cmd in rows), lines
    assert all(row[1].isdigit() and row[2].isdigit() for row in rows.values()), lines
    console.write(b"exit\n")
    assert console.finish() == 0
    os.kill(tty_exec.child(), signal.SIGTERM)  # gcsctl passes it on: the sleep goes too
    assert tty_exec.finish() == 128 + signal.SIGTERM
    assert "sleep 123" not in ps_commands(started)


def test_layer_conversion_shows_a_progress_bar_on_a_terminal(tmp_path, on_pty):
    import tarfile
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(8 << 20))
    with tarfile.open(tmp_path / "layer.tar", "w") as tar:
        tar.add(src, arcname=".")
    p = on_pty(cli(str(tmp_path), "image", "layer", str(tmp_path / "l.img"), str(tmp_path / "layer.tar")))
    assert p.finish() == 0
    assert b"\r\x1b[Kunpacking " in p.out and b"] 100% " in p.out and b"[####" in p.out, p.out
    assert b"ext4 layer image" in p.out
