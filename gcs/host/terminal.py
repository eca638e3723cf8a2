"""A UVM process's stdio at gcsctl's end, as `docker exec` behaves: pipes or a terminal
relayed until the process has exited, our signals passed on to it (nothing is left running
in the UVM when gcsctl goes), the local terminal restored on every path, and no traceback
when a reader of our output goes away (the process gets SIGPIPE, as it would locally)."""
from __future__ import annotations

import os
import queue
import select
import signal
import socket
import sys
import threading
from typing import Any, Callable, Optional

from gcs.host.bridge_client import BridgeClosed, RpcError
from gcs.host.processes import GuestProcess

CHUNK = 1 << 16
KILL_AFTER = 3.0  # seconds a process has to exit after a passed-on signal before it is killed
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EOF_CHAR = b"\x04"  # VEOF: how end of input reaches a process reading a terminal
DRAIN_AFTER_EXIT = 10.0  # seconds to wait for the exit code once the output has ended
BRIDGE_ERRORS = (OSError, RpcError, BridgeClosed, TimeoutError)


def exit_code(code: int) -> int:
    """What a shell's $? shows: the low byte (128+N for a signal, from the agent)."""
    return code & 0xFF if code != 0xFFFFFFFF else 255


class SignalRelay:
    """While a UVM process runs: SIGINT/SIGTERM/SIGHUP to us go to it, and a second one, or
    no exit within KILL_AFTER seconds, kills it; SIGWINCH calls `on_winch`. The bridge calls
    happen on a thread of this relay's own, never inside a signal handler (the main thread
    may be in the middle of a bridge call itself)."""

    def __init__(self, proc: GuestProcess, on_winch: Optional[Callable[[], None]] = None) -> None:
        self.proc = proc
        self.on_winch = on_winch
        self.received: list[int] = []
        self.exited = threading.Event()
        self._queue: "queue.SimpleQueue[Optional[int]]" = queue.SimpleQueue()  # put() is reentrant
        self._saved: dict[int, Any] = {}
        self._thread = threading.Thread(target=self._run, name="signal-relay", daemon=True)

    def __enter__(self) -> "SignalRelay":
        self._thread.start()
        for signum in FORWARDED + ((signal.SIGWINCH,) if self.on_winch else ()):
            if signal.getsignal(signum) is not signal.SIG_IGN:  # nohup's SIGHUP stays ignored
                self._saved[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        self.exited.set()
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._queue.put(None)

    def _handler(self, signum: int, _frame: object) -> None:
        self._queue.put(signum)

    def _run(self) -> None:
        while True:
            signum = self._queue.get()
            if signum is None:
                return
            if signum == signal.SIGWINCH:
                if self.on_winch is not None:
                    self.on_winch()
                continue
            self._pass_on(signum)

    def _pass_on(self, signum: int) -> None:
        self.received.append(signum)
        if len(self.received) > 1:
            self.kill()
            return
        try:
            self.proc.signal(signum)
        except BRIDGE_ERRORS:
            pass  # it has exited already
        timer = threading.Timer(KILL_AFTER, self._kill_if_running)
        timer.daemon = True  # never holds gcsctl's exit
        timer.start()

    def _kill_if_running(self) -> None:
        if not self.exited.is_set():
            self.kill()

    def kill(self) -> None:
        try:
            self.proc.kill()
        except BRIDGE_ERRORS:
            pass


class Output:
    """Our stdout or stderr: when its reader goes away, the UVM process gets SIGPIPE (as a
    local writer would) and what it still writes is discarded."""

    def __init__(self, fd: int, proc: GuestProcess) -> None:
        self.fd, self.proc = fd, proc
        self.broken = False
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
        except OSError:
            self._broke()

    def _broke(self) -> None:
        with self._lock:
            if self.broken:
                return
            self.broken = True
        # Nothing more can be written there; keep the interpreter's own flush at exit quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self.fd)
        os.close(devnull)
        try:
            self.proc.signal(signal.SIGPIPE)
        except BRIDGE_ERRORS:
            pass


# --- pipes --------------------------------------------------------------------------------

def relay_pipes(proc: GuestProcess, forward_stdin: bool) -> int:
    """stdout/stderr to ours (and our stdin to it with -i, its end as the pipe's end) until
    the process has exited; returns its exit code."""
    outputs = [(proc.stdout, Output(sys.stdout.fileno(), proc)), (proc.stderr, Output(sys.stderr.fileno(), proc))]
    copies = [threading.Thread(target=_copy, args=pair, daemon=True) for pair in outputs if pair[0] is not None]
    for t in copies:
        t.start()
    if forward_stdin and proc.stdin is not None:
        threading.Thread(target=_feed, args=(proc,), daemon=True).start()
    with SignalRelay(proc):
        code = proc.wait()
    for t in copies:
        t.join(5)
    proc.close()
    return exit_code(code)


def _copy(sock: socket.socket, out: Output) -> None:
    while True:
        try:
            data = sock.recv(CHUNK)
        except OSError:
            return
        if not data:
            return
        out.write(data)


def _feed(proc: GuestProcess) -> None:
    assert proc.stdin is not None
    fd = sys.stdin.fileno()
    while True:
        try:
            data = os.read(fd, CHUNK)
        except OSError:
            data = b""
        if not data:
            break
        try:
            proc.stdin.sendall(data)
        except OSError:
            return
    proc.close_stdin()


# --- a terminal ---------------------------------------------------------------------------

class RawTerminal:
    """Our terminal in raw mode for the session (keys, ^C included, go to the UVM's pty),
    restored however the session ends."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved: Optional[list] = None

    def __enter__(self) -> "RawTerminal":
        import termios
        import tty

        self.saved = termios.tcgetattr(self.fd)
        tty.setraw(self.fd)
        return self

    def __exit__(self, *exc: object) -> None:
        import termios

        if self.saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


class _Null:
    def __enter__(self) -> "_Null":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def window_fd() -> Optional[int]:
    """A terminal of ours to take the window size from: stdin, else stdout."""
    for fd in (0, 1):
        if os.isatty(fd):
            return fd
    return None


def relay_tty(proc: GuestProcess, forward_stdin: bool) -> int:
    """Our terminal <-> the process's pty until it exits; returns its exit code. Without
    forward_stdin (-t without -i) our stdin is not read and the process's terminal input is
    at its end at once; with it, the end of our stdin (a pipe, say) reaches the process as
    the terminal's end-of-file character."""
    in_fd, size_fd = sys.stdin.fileno(), window_fd()

    def sync_size() -> None:
        if size_fd is None:
            return
        from gcs.stdio.pty import get_window_size
        try:
            rows, cols = get_window_size(size_fd)
            if rows and cols:
                proc.resize(rows, cols)
        except BRIDGE_ERRORS:
            pass

    raw = RawTerminal(in_fd) if forward_stdin and os.isatty(in_fd) else _Null()
    waiter = _Waiter(proc)
    with raw, SignalRelay(proc, on_winch=sync_size):
        sync_size()
        if not forward_stdin:
            _end_input(proc, b"\n")
        _pump(proc, in_fd if forward_stdin else None, waiter)
    code = waiter.result(DRAIN_AFTER_EXIT)
    proc.close()
    return exit_code(code if code is not None else 255)


def _pump(proc: GuestProcess, in_fd: Optional[int], waiter: "_Waiter") -> None:
    """Copy until the pty's output ends (the agent ends it once the process has exited and
    every slave fd is closed)."""
    sock = proc.stdout
    assert sock is not None
    out = Output(sys.stdout.fileno(), proc)
    last = b"\n"
    while True:
        fds = [sock.fileno()] + ([in_fd] if in_fd is not None else [])
        ready, _, _ = select.select(fds, [], [])
        if sock.fileno() in ready:
            data = sock.recv(CHUNK)
            if not data:
                return
            out.write(data)
        if in_fd is not None and in_fd in ready:
            data = _read(in_fd)
            if data:
                _send(proc, data)
                last = data[-1:]
            else:
                _end_input(proc, last)
                in_fd = None


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, CHUNK)
    except OSError:
        return b""


def _send(proc: GuestProcess, data: bytes) -> None:
    try:
        if proc.stdin is not None:
            proc.stdin.sendall(data)
    except OSError:
        pass  # the process has gone: its output's end follows


def _end_input(proc: GuestProcess, last: bytes) -> None:
    """End of input for a process reading a terminal: VEOF at the start of a line (after a
    partial line, a first VEOF only hands that line over)."""
    _send(proc, EOF_CHAR if last in (b"\n", b"\r") else EOF_CHAR * 2)
    proc.close_stdin()


class _Waiter:
    """WaitForProcess on a thread of its own (the agent answers once the output has ended)."""

    def __init__(self, proc: GuestProcess) -> None:
        self.proc = proc
        self.code: Optional[int] = None
        self.error: Optional[BaseException] = None
        self.done = threading.Event()
        threading.Thread(target=self._run, name="waiter", daemon=True).start()

    def _run(self) -> None:
        try:
            self.code = self.proc.wait()
        except BRIDGE_ERRORS as err:
            self.error = err
        finally:
            self.done.set()

    def result(self, timeout: float) -> Optional[int]:
        self.done.wait(timeout)
        if self.error is not None:
            raise self.error
        return self.code
