"""The log never blocks the agent: a reader that stops reading costs lines, never requests,
and what arrives is always whole JSON lines (the host stops at the first non-JSON byte)."""
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from gcs import aio
from gcs.host.bridge_client import RpcError
from gcs.host.launcher import LocalUvm, agent_command, agent_env
from gcs.host.processes import ProcessClient
from gcs.log import LineWriter, Logger
from gcs.protocol.ids import BRIDGE_PORT
from vmbus.hybrid import host_listen

from conftest import requires_root

DROPPED = "log lines dropped: the log reader was not keeping up"


# --- helpers ------------------------------------------------------------------------------
class Drain:
    """Reads an fd to EOF on a thread once started."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.chunks: list[bytes] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Drain":
        self.thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except OSError:
                return
            if not data:
                return
            self.chunks.append(data)

    def text(self) -> str:
        return b"".join(self.chunks).decode()

    def join(self, timeout: float = 10.0) -> str:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the reader never saw EOF"
        return self.text()


def records(text: str) -> list[dict]:
    """Every line as JSON (the host's view: it stops at the first byte that is not)."""
    assert text.endswith("\n"), f"the stream ends in the middle of a line: {text[-200:]!r}"
    out = []
    for n, line in enumerate(text.splitlines()):
        try:
            out.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"line {n} is not JSON: {line[:300]!r}") from None
    return out


def fill(logger: Logger, n: int, pad: int = 100) -> float:
    t0 = time.monotonic()
    for i in range(n):
        logger.info("line", i=i, pad="x" * pad)
    return time.monotonic() - t0


def check_sequence(recs: list[dict], total: int) -> int:
    """Lines 0..k in order, then (if any were dropped) one note with the exact count, then
    the rest in order. Returns how many were dropped."""
    seen = [r["i"] for r in recs if "i" in r]
    notes = [r for r in recs if r["msg"] == DROPPED]
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    dropped = sum(n["dropped"] for n in notes)
    assert len(seen) + dropped == total
    for note in notes:  # the note stands where the gap is
        at = recs.index(note)
        before = recs[at - 1]["i"] if at > 0 and "i" in recs[at - 1] else -1
        after = recs[at + 1]["i"] if at + 1 < len(recs) and "i" in recs[at + 1] else total
        assert after - before - 1 == note["dropped"]
    return dropped


def run_loop_until(cond, timeout: float = 10.0) -> None:
    async def wait() -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, "timed out"
            await aio.sleep(0.005)
    aio.get_loop().run_until_complete(wait())


# --- the logger on its own ----------------------------------------------------------------
def test_full_pipe_never_blocks_and_drops_newest_with_a_count():
    r, w = os.pipe()
    try:
        logger = Logger(w, "info")
        spent = fill(logger, 20000)
        assert spent < 5, f"logging into a full pipe took {spent:.1f}s"
        assert logger.writer.kind == "pipe" and os.get_blocking(w), "the shared description must stay blocking"
        assert logger.writer.queued <= logger.writer.limit and logger.writer.dropped > 0
        drain = Drain(r).start()
        assert logger.flush(10)
        logger.writer.close()
        os.close(w)
        w = -1
        dropped = check_sequence(records(drain.join()), 20000)
        assert dropped > 0
    finally:
        if w >= 0:
            os.close(w)
        os.close(r)


def test_full_socket_is_written_with_dontwait_and_flushed_by_the_loop():
    ours, host = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        logger = Logger(ours.fileno(), "info")
        assert fill(logger, 3000) < 5
        assert logger.writer.kind == "socket" and ours.getblocking(), "the socket itself stays blocking"
        assert logger.writer.queued > 0 and logger.writer.watching, "queued lines wait for the loop"
        drain = Drain(host.fileno()).start()
        run_loop_until(lambda: not logger.writer.queued)
        assert not logger.writer.watching, "the watch ends once the queue is empty"
        logger.info("after", i=3000)
        logger.writer.close()
        ours.shutdown(socket.SHUT_WR)
        recs = records(drain.join())
        assert check_sequence(recs, 3001) == 0 and recs[-1]["msg"] == "after"
    finally:
        ours.close()
        host.close()


def test_a_line_the_kernel_took_in_part_is_finished_before_the_next():
    r, w = os.pipe()
    try:
        logger = Logger(w, "info")
        logger.info("big", i=0, pad="y" * 300_000)  # several times the pipe's 64 KiB
        assert logger.writer.queued > 0
        for i in range(1, 50):
            logger.info("small", i=i)
        drain = Drain(r).start()
        assert logger.flush(10)
        logger.writer.close()
        os.close(w)
        w = -1
        recs = records(drain.join())
        assert [x["i"] for x in recs] == list(range(50)) and len(recs[0]["pad"]) == 300_000
    finally:
        if w >= 0:
            os.close(w)
        os.close(r)


def test_the_count_of_dropped_lines_comes_before_the_next_line_kept():
    r, w = os.pipe()
    try:
        logger = Logger(w, "info")
        logger.writer = LineWriter(w, logger._dropped_note, limit=8192)
        fill(logger, 2000)
        first = logger.writer.dropped
        assert first > 0
        os.set_blocking(r, False)
        got = b""
        while True:  # the reader catches up with what the pipe holds (the queue stays)
            try:
                got += os.read(r, 1 << 16)
            except BlockingIOError:
                break
        logger.info("line", i=2000)  # room again: the note first, then this line
        os.set_blocking(r, True)
        drain = Drain(r).start()
        assert logger.flush(10)
        logger.writer.close()
        os.close(w)
        w = -1
        recs = records(got.decode() + drain.join())
        check_sequence(recs, 2001)
        assert recs[-1]["i"] == 2000
    finally:
        if w >= 0:
            os.close(w)
        os.close(r)


def test_a_reader_that_went_away_costs_nothing():
    r, w = os.pipe()
    logger = Logger(w, "info")
    fill(logger, 2000)  # fills the pipe, queues the rest
    os.close(r)
    logger.info("after the reader left")  # EPIPE: the queue is discarded, nothing raised
    assert logger.writer.queued == 0 and not logger.writer.watching
    logger.writer.close()
    os.close(w)

    ours, host = socket.socketpair()
    host.close()
    logger = Logger(ours.fileno(), "info")
    logger.info("to nobody")
    assert logger.writer.queued == 0
    logger.writer.close()
    ours.close()


def test_flush_at_shutdown_waits_a_bounded_time():
    r, w = os.pipe()
    try:
        logger = Logger(w, "info")
        fill(logger, 2000)
        t0 = time.monotonic()
        assert logger.flush(0.2) is False
        assert time.monotonic() - t0 < 1.5
        assert not logger.writer.watching
    finally:
        logger.writer.close()
        os.close(w)
        os.close(r)


def test_a_regular_file_is_written_directly(tmp_path):
    path = tmp_path / "log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        logger = Logger(fd, "info")
        fill(logger, 100)
        assert logger.writer.kind == "plain" and logger.writer.queued == 0
    finally:
        os.close(fd)
    check_sequence(records(path.read_text()), 100)


def test_lines_from_threads_are_never_interleaved():
    r, w = os.pipe()
    try:
        logger = Logger(w, "info")
        drain = Drain(r).start()

        def spam(t: int) -> None:
            for i in range(500):
                logger.info("thread line", t=t, i=i, pad="z" * 3000)  # below and above PIPE_BUF

        threads = [threading.Thread(target=spam, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert logger.flush(10)
        logger.writer.close()
        os.close(w)
        w = -1
        recs = records(drain.join())
        assert len([x for x in recs if x["msg"] == "thread line"]) + sum(
            x.get("dropped", 0) for x in recs) == 2000
    finally:
        if w >= 0:
            os.close(w)
        os.close(r)


# --- a local-mode agent whose stderr nobody reads -------------------------------------------
class PipeLogUvm(LocalUvm):
    """A local-mode agent with its stderr on a pipe the test reads only when it chooses."""

    def start(self, timeout: float = 10.0, negotiate: bool = True) -> "PipeLogUvm":
        self._listener = host_listen(self.vsock_path, BRIDGE_PORT)
        args = ["--local", "--exit-with-parent", "--transport", f"hybrid:{self.vsock_path}",
                "-loglevel", self.loglevel, *self.extra_args]
        self.proc = subprocess.Popen(agent_command(args), env=agent_env(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.bridge = self.accept_bridge(timeout)
        self.client = ProcessClient(self.bridge, self.vsock_path)
        if negotiate:
            self.bridge.negotiate()
        return self


def failing_exec(u: LocalUvm, size: int) -> None:
    """A request whose failure is logged with a big line (the program name is in it)."""
    with pytest.raises(RpcError):
        u.client.exec(["/no/such/" + "p" * size])


@requires_root
def test_agent_keeps_answering_while_its_stderr_pipe_is_full(tmp_path):
    u = PipeLogUvm(str(tmp_path / "uvm"), loglevel="debug")
    u.start()
    drain = None
    try:
        for _ in range(4):  # 4 x 30 KB lines: the 64 KiB pipe is full from here on
            failing_exec(u, 30_000)
        slowest, t0 = 0.0, time.monotonic()
        for _ in range(200):
            t1 = time.monotonic()
            assert u.client.exec(["true"]).wait(rpc_timeout=5) == 0
            slowest = max(slowest, time.monotonic() - t1)
        total = time.monotonic() - t0
        # Blocked on the pipe, the agent would answer nothing at all; the bounds are loose for
        # a loaded machine (a round trip is a few ms here).
        assert slowest < 5 and total < 60, f"200 exec round trips: {total:.2f}s, slowest {slowest:.2f}s"
        for _ in range(45):  # ~1.35 MB more than the 1 MiB queue holds: lines are dropped
            failing_exec(u, 30_000)
        drain = Drain(u.proc.stderr.fileno()).start()
        deadline = time.monotonic() + 10
        while DROPPED not in drain.text():
            assert time.monotonic() < deadline, "no line saying lines were dropped"
            time.sleep(0.05)
        assert u.client.exec(["true"]).wait(rpc_timeout=5) == 0
    finally:
        u.stop()
        if drain is None:
            drain = Drain(u.proc.stderr.fileno()).start()
        text = drain.join()
        u.proc.stderr.close()
    recs = records(text)
    assert any(r["msg"] == "gcs exiting" for r in recs), "the lines queued at exit were flushed"
    assert sum(r.get("dropped", 0) for r in recs if r["msg"] == DROPPED) > 0
