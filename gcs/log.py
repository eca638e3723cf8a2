"""Structured logs: one JSON object per line on stderr (logrus JSONFormatter shape).

The host parses the GCS's stderr (vsock port 109) as a stream of JSON objects with
`time` (RFC 3339, nanoseconds), `level` and `msg`; the first non-JSON byte makes it stop
reading logs. So nothing else may be written to this fd, and a line is never split or
interleaved with another. Callers pass fields, never whole environments or secrets: the
helpers below summarise processes instead (which is how `-scrub-logs` is honoured).

Writing never blocks the agent (one thread, one event loop): a host that stops reading
its end would otherwise stall every request. See `LineWriter`.
"""
from __future__ import annotations

import os
import time
from _collections import deque  # `collections` itself pulls in more than deque
from _thread import allocate_lock

from gcs.protocol.jsoncodec import make_encoder

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are never evaluated
if TYPE_CHECKING:
    from typing import Any, Callable

_encode = make_encoder(default=str, allow_nan=True)
LEVELS = {"trace": 0, "debug": 1, "info": 2, "warning": 3, "warn": 3, "error": 4, "fatal": 5, "panic": 6}
BUFFER_LIMIT = 1 << 20  # bytes of lines kept while the reader is not keeping up

_S_IFMT, _S_IFSOCK, _S_IFIFO = 0o170000, 0o140000, 0o010000  # (no `stat` import for three constants)
_PLAIN, _SOCKET, _PIPE = "plain", "socket", "pipe"


class LineWriter:
    """Writes whole lines to `fd` without ever blocking the caller.

    - a socket (the UVM's vsock stream to the host): send(MSG_DONTWAIT), which leaves the
      socket itself blocking for anyone else who shares it;
    - a pipe or FIFO: written through a reopening of /proc/self/fd/N with O_NONBLOCK, a new
      open file description, so the O_NONBLOCK does not reach the shell's or the
      supervisor's stderr (the same pipe, but their own description);
    - anything else is written as before, blocking: a regular file never waits for a
      reader (O_NONBLOCK means nothing to it), /dev/null never blocks, and a tty is a
      developer's terminal in local mode, which stalls only when they ask it to (^S).

    When a write would block, lines wait in a queue of at most `limit` bytes, flushed when
    the event loop sees the fd writable (or by the next line). A line the kernel took only
    part of stays at the head and is finished before anything else is written. When the
    queue is full the newest lines are dropped: the queued ones are older, so the first
    lines of an incident (usually the ones that explain it) survive, and the gap is one
    contiguous range, where one line saying how many were dropped is written in its place.

    Thread-safe (a lock): blocking calls may run on worker threads and log from there. Never
    log from a Python signal handler (the lock is not reentrant; the agent's signal handlers
    run from the event loop, not in signal context).
    """

    def __init__(self, fd: int, note: Callable[[int], bytes], limit: int = BUFFER_LIMIT) -> None:
        self.fd = fd
        self.limit = limit
        self._note = note  # the line that says how many lines were dropped
        self._kind = ""  # chosen at the first write (costs an fstat), see _open
        self._out = fd  # the fd written: fd itself, a dup of a socket, a pipe reopening
        self._sock: Any = None
        self._send_flags = 0
        self._queue: deque = deque()
        self._head: memoryview | None = None  # what is left of a line partly written
        self.queued = 0  # bytes in _head and _queue
        self.dropped = 0  # lines dropped since the last note
        self.dropped_total = 0
        self._watching = False
        self._on_writable_cb = self._on_writable  # one bound method: the loop compares by identity
        self._lock = allocate_lock()

    @property
    def kind(self) -> str:
        """How lines are written: "socket", "pipe", "plain" ("" before the first line)."""
        return self._kind

    @property
    def watching(self) -> bool:
        """Whether the event loop will call back when the fd is writable."""
        return self._watching

    # --- the fd ---------------------------------------------------------------------------
    def _open(self) -> None:
        try:
            kind = os.fstat(self.fd).st_mode & _S_IFMT
        except OSError:
            self._kind = _PLAIN  # a closed fd: writes fail and are ignored, as before
            return
        self._kind = _PLAIN
        if kind == _S_IFSOCK:
            import _socket
            try:
                self._sock = _socket.socket(fileno=os.dup(self.fd))  # dup: the object may close it
                self._out = self._sock.fileno()
                self._send_flags = _socket.MSG_DONTWAIT | _socket.MSG_NOSIGNAL
                self._kind = _SOCKET
            except OSError:
                pass
        elif kind == _S_IFIFO:
            try:
                self._out = os.open(f"/proc/self/fd/{self.fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                self._kind = _PIPE
            except OSError:
                pass  # no /proc: write blocking, as before

    def close(self) -> None:
        """Forget the fd (configure() pointed the log elsewhere); queued lines are lost."""
        with self._lock:
            self._unwatch()
            if self._sock is not None:
                self._sock.close()
            elif self._out != self.fd:
                os.close(self._out)
            self._sock, self._out, self._kind = None, self.fd, ""
            self._queue.clear()
            self._head, self.queued = None, 0

    def _send(self, data: memoryview | bytes) -> int:
        """One non-blocking write; BlockingIOError when nothing could be written."""
        if self._kind == _SOCKET:
            return self._sock.send(data, self._send_flags)
        return os.write(self._out, data)

    # --- writing --------------------------------------------------------------------------
    def write(self, line: bytes) -> None:
        with self._lock:
            if not self._kind:
                self._open()
            if self._kind == _PLAIN:
                self._write_blocking(line)
                return
            if self.queued:
                self._push()  # the reader may have caught up since the loop last looked
            if self.queued:
                self._enqueue(line)  # still blocked (the push stopped at EAGAIN): wait in order
            else:
                self._write_first(line)

    def _write_blocking(self, line: bytes) -> None:
        view = memoryview(line)
        try:
            while view:
                view = view[os.write(self._out, view):]
        except OSError:
            pass  # a broken log stream must never take the agent down

    def _write_first(self, line: bytes) -> None:
        """Nothing queued: write straight away, queue what the kernel did not take."""
        try:
            written = self._send(line)
        except BlockingIOError:
            written = 0
        except OSError:
            return  # the reader is gone: nothing to keep the line for
        if written < len(line):
            self._head = memoryview(line)[written:]
            self.queued = len(line) - written
            self._watch()

    def _enqueue(self, line: bytes) -> None:
        if self.dropped:
            note = self._note(self.dropped)
            if self.queued + len(note) + len(line) > self.limit:
                self._drop()
                return
            self._queue.append(note)
            self.queued += len(note)
            self.dropped = 0
        if self.queued + len(line) > self.limit:
            self._drop()
            return
        self._queue.append(line)
        self.queued += len(line)

    def _drop(self) -> None:
        self.dropped += 1
        self.dropped_total += 1

    def _push(self) -> None:
        """Write queued lines until the fd would block, in order, the partial one first."""
        while True:
            if self._head is None:
                if not self._queue and self.dropped:
                    self._queue.append(self._note(self.dropped))  # the gap closed: say how big
                    self.queued += len(self._queue[0])
                    self.dropped = 0
                if not self._queue:
                    break
                self._head = memoryview(self._queue.popleft())
            try:
                written = self._send(self._head)
            except BlockingIOError:
                break
            except OSError:
                self._discard()  # the reader is gone: what is queued can never arrive
                break
            self.queued -= written
            self._head = self._head[written:] if written < len(self._head) else None
        if self.queued:
            self._watch()
        else:
            self._unwatch()

    def _discard(self) -> None:
        self.dropped_total += len(self._queue) + (self._head is not None)
        self._queue.clear()
        self._head, self.queued, self.dropped = None, 0, 0

    # --- the event loop -------------------------------------------------------------------
    def _watch(self) -> None:
        # Registered from whichever thread logs: only this writer touches its fd's watch, and
        # the loop's dict and epoll calls are atomic under the GIL.
        if not self._watching:
            from gcs import aio  # lazily: most runs never get here, and log is on the start-up path
            try:
                aio.get_loop().add_writer(self._out, self._on_writable_cb)
            except OSError:
                return  # not watchable: the next line (or flush) pushes the queue instead
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            from gcs import aio
            aio.get_loop().remove_writer_if(self._out, self._on_writable_cb)
            self._watching = False

    def _on_writable(self) -> None:
        with self._lock:
            self._push()

    def flush(self, timeout: float) -> bool:
        """Blocking, for at most `timeout` seconds (at shutdown): write what is queued.
        True when nothing is left."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.queued or self.dropped:
                self._push()
                remaining = deadline - time.monotonic()
                if not (self.queued or self.dropped) or remaining <= 0:
                    break
                import select
                poller = select.poll()
                poller.register(self._out, select.POLLOUT)
                poller.poll(remaining * 1000)
            self._unwatch()
            return not self.queued


class Logger:
    def __init__(self, fd: int = 2, level: str = "info") -> None:
        self.fd = fd
        self.threshold = LEVELS.get(level.lower(), 2)
        self.writer = LineWriter(fd, self._dropped_note)

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self.threshold

    def format(self, level: str, msg: str, fields: dict[str, Any]) -> bytes:
        ns = time.time_ns()
        sec, frac = divmod(ns, 1_000_000_000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"
        record = {"time": stamp, "level": "warning" if level == "warn" else level, "msg": msg}
        for key, value in fields.items():
            # logrus keeps the three standard keys for itself; clashing fields get a prefix.
            record["fields." + key if key in record else key] = value
        return (_encode(record) + "\n").encode()

    def log(self, level: str, msg: str, **fields: Any) -> None:
        if LEVELS[level] < self.threshold:
            return
        self.writer.write(self.format(level, msg, fields))

    def _dropped_note(self, count: int) -> bytes:
        return self.format("warning", "log lines dropped: the log reader was not keeping up",
                           {"dropped": count})

    def flush(self, timeout: float = 1.0) -> bool:
        """At shutdown: wait up to `timeout` seconds for queued lines to be written."""
        return self.writer.flush(timeout)

    def debug(self, msg: str, **fields: Any) -> None:
        self.log("debug", msg, **fields)

    def info(self, msg: str, **fields: Any) -> None:
        self.log("info", msg, **fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self.log("warning", msg, **fields)

    def error(self, msg: str, **fields: Any) -> None:
        self.log("error", msg, **fields)


log = Logger()


def configure(level: str = "info", fd: int = 2) -> None:
    log.threshold = LEVELS.get(level.lower(), 2)
    if fd != log.fd:
        log.writer.close()
        log.fd = fd
        log.writer = LineWriter(fd, log._dropped_note)


def describe_command(argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """What may be logged about a command: its program and sizes, not its arguments or env."""
    fields: dict[str, Any] = {"program": argv[0] if argv else "", "argc": len(argv)}
    if env is not None:
        fields["env_count"] = len(env)
    return fields
