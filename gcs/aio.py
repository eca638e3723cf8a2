"""A small single-threaded event loop for the agent: epoll, timers, signals, tasks.

Why not asyncio: importing it costs 40-60 ms natively and ~0.4 s under TCG, and ~11 MB of
RSS, which is most of the agent's start-up budget. The agent needs far less: readiness of
fds, timers, signal delivery and coroutines. Coroutines are plain `async def`; an awaitable
here is a `Future`, and a task resumes when the future it awaits is resolved.
"""
from __future__ import annotations

import errno
import heapq
import os
import select
import _signal  # not `signal`/`socket`: their enums cost ~0.3 s of start-up under TCG
import _socket
import time
from _collections import deque  # `collections` itself pulls in more than deque

from gcs import fdpass

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are never evaluated
if TYPE_CHECKING:
    import socket
    from typing import Any, Awaitable, Callable, Coroutine, Optional

__all__ = [
    "Cancelled", "TimeoutError_", "Future", "Task", "Loop", "Event", "Queue",
    "get_loop", "spawn", "sleep", "wait_readable", "wait_writable", "wait_for",
    "sock_recv_into", "sock_recv", "sock_sendall", "sock_connect", "sock_accept",
    "fd_read", "fd_write_all", "gather", "run_in_thread", "wait_any",
]


class Cancelled(BaseException):
    """Thrown into a task that was cancelled."""


class TimeoutError_(Exception):
    """`wait_for` ran out of time."""


_PENDING, _DONE, _CANCELLED = 0, 1, 2


class Future:
    __slots__ = ("_state", "_result", "_exc", "_callbacks", "private")

    def __init__(self, private: bool = False) -> None:
        # private: only the awaiting task uses it, so cancelling that task cancels it too
        # (which releases its fd watch or timer). Shared futures are never cancelled that way.
        self.private = private
        self._state = _PENDING
        self._result: Any = None
        self._exc: Optional[BaseException] = None
        self._callbacks: list[Callable[["Future"], None]] = []

    def done(self) -> bool:
        return self._state != _PENDING

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def result(self) -> Any:
        if self._state == _CANCELLED:
            raise Cancelled()
        if self._state == _PENDING:
            raise RuntimeError("future is not done")
        if self._exc is not None:
            raise self._exc
        return self._result

    def exception(self) -> Optional[BaseException]:
        return self._exc

    def set_result(self, value: Any = None) -> None:
        if self._state != _PENDING:
            return
        self._result = value
        self._state = _DONE
        self._run_callbacks()

    def set_exception(self, exc: BaseException) -> None:
        if self._state != _PENDING:
            return
        self._exc = exc
        self._state = _DONE
        self._run_callbacks()

    def cancel(self) -> bool:
        if self._state != _PENDING:
            return False
        self._state = _CANCELLED
        self._run_callbacks()
        return True

    def add_done_callback(self, cb: Callable[["Future"], None]) -> None:
        if self._state != _PENDING:
            _loop.call_soon(cb, self)
        else:
            self._callbacks.append(cb)

    def remove_done_callback(self, cb: Callable[["Future"], None]) -> None:
        try:
            self._callbacks.remove(cb)
        except ValueError:
            pass

    def _run_callbacks(self) -> None:
        cbs, self._callbacks = self._callbacks, []
        for cb in cbs:
            _loop.call_soon(cb, self)

    def __await__(self):
        if self._state == _PENDING:
            yield self
        return self.result()


class Task(Future):
    """Drives a coroutine; itself a future for the coroutine's result."""

    __slots__ = ("coro", "name", "_waiting_on", "_cancel_requested")

    def __init__(self, coro: Coroutine, name: str = "") -> None:
        super().__init__()
        self.coro = coro
        self.name = name or getattr(coro, "__qualname__", "task")
        self._waiting_on: Optional[Future] = None
        self._cancel_requested = False
        _loop.tasks.add(self)
        _loop.call_soon(self._step, None, None)

    def cancel(self) -> bool:
        if self.done():
            return False
        self._cancel_requested = True
        waiting = self._waiting_on
        if waiting is not None and not waiting.done():
            waiting.remove_done_callback(self._wakeup)
            self._waiting_on = None
            if waiting.private:
                waiting.cancel()
            _loop.call_soon(self._step, None, Cancelled())
        # A future that already resolved has its wakeup queued: its result is delivered first
        # (an item a Queue handed over is never lost) and the cancel lands at the next await.
        return True

    def _wakeup(self, fut: Future) -> None:
        self._waiting_on = None
        if fut.cancelled():
            self._step(None, Cancelled())
        elif fut._exc is not None:
            self._step(None, fut._exc, True)
        else:
            self._step(fut._result, None, True)

    def _step(self, value: Any, exc: Optional[BaseException], delivered: bool = False) -> None:
        if self.done():
            return
        if self._cancel_requested and exc is None and not delivered:
            exc = Cancelled()  # cancelled before it first ran, or while running
        if exc is not None and isinstance(exc, Cancelled):
            self._cancel_requested = False
        try:
            if exc is not None:
                yielded = self.coro.throw(exc)
            else:
                yielded = self.coro.send(value)
        except StopIteration as stop:
            _loop.tasks.discard(self)
            self.set_result(stop.value)
            return
        except Cancelled:
            _loop.tasks.discard(self)
            Future.cancel(self)
            return
        except BaseException as err:  # noqa: BLE001 - a task's failure is its result
            _loop.tasks.discard(self)
            self.set_exception(err)
            if not self._callbacks:
                _loop.report_orphan_exception(self, err)
            if isinstance(err, (KeyboardInterrupt, SystemExit)):
                raise
            return
        if not isinstance(yielded, Future):
            _loop.call_soon(self._step, None, RuntimeError(f"task yielded {yielded!r}"))
        elif self._cancel_requested:
            # Cancelled while it ran (or while a result was being delivered): cancel this await.
            if yielded.private:
                yielded.cancel()
            _loop.call_soon(self._step, None, Cancelled())
        else:
            self._waiting_on = yielded
            yielded.add_done_callback(self._wakeup)


class _Timer:
    __slots__ = ("when", "callback", "args", "cancelled", "loop")

    def __init__(self, when: float, callback: Callable, args: tuple, loop: "Loop") -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False
        self.loop = loop

    def cancel(self) -> None:
        """A cancelled timer stays in the heap until it is due or the heap is compacted; what
        it would have called (a future, and all that hangs on it) is let go at once: a wait
        with a long timeout that ends early must not hold on to anything."""
        if not self.cancelled:
            self.cancelled = True
            self.callback, self.args = _no_callback, ()
            if self.loop is not None:  # still in the heap (None: it ran already)
                self.loop._cancelled_timer()

    def __lt__(self, other: "_Timer") -> bool:
        return self.when < other.when


class Loop:
    def __init__(self) -> None:
        self._ep = select.epoll()
        self._ready: deque = deque()
        self._timers: list[_Timer] = []
        self._cancelled_timers = 0
        self._readers: dict[int, Callable[[], None]] = {}
        self._writers: dict[int, Callable[[], None]] = {}
        self._masks: dict[int, int] = {}
        self._stopping = False
        self.tasks: set[Task] = set()
        self._signal_handlers: dict[int, Callable[[int], None]] = {}
        self._signal_rfd = -1
        self.on_orphan_exception: Callable[[Task, BaseException], None] = _print_orphan
        self._main: Optional[Task] = None  # run_until_complete's task: its caller gets the error

    # --- scheduling -------------------------------------------------------------------
    def call_soon(self, cb: Callable, *args: Any) -> None:
        self._ready.append((cb, args))

    def call_later(self, delay: float, cb: Callable, *args: Any) -> _Timer:
        timer = _Timer(time.monotonic() + delay, cb, args, self)
        heapq.heappush(self._timers, timer)
        return timer

    def _cancelled_timer(self) -> None:
        # Most timers guard waits that end well before them (60 s setup bounds, say): once
        # they are most of the heap, it is rebuilt without them (in place: run_forever holds it).
        self._cancelled_timers += 1
        timers = self._timers
        if self._cancelled_timers > 64 and self._cancelled_timers * 2 > len(timers):
            for t in timers:
                if t.cancelled:
                    t.loop = None
            timers[:] = [t for t in timers if not t.cancelled]
            heapq.heapify(timers)
            self._cancelled_timers = 0

    def report_orphan_exception(self, task: Task, err: BaseException) -> None:
        # Deferred: a caller that awaits the task right after it failed is not an orphan.
        def check() -> None:
            if not task._callbacks and task is not self._main:
                self.on_orphan_exception(task, err)
        self.call_soon(check)

    # --- fd readiness -----------------------------------------------------------------
    def _update(self, fd: int) -> None:
        mask = (select.EPOLLIN if fd in self._readers else 0) | (
            select.EPOLLOUT if fd in self._writers else 0)
        old = self._masks.get(fd, 0)
        if mask == old:
            return
        if mask == 0:
            del self._masks[fd]
            try:
                self._ep.unregister(fd)
            except OSError:
                pass
        else:
            # Tolerate fds closed while watched (epoll forgot them) and reused numbers.
            try:
                if old == 0:
                    self._ep.register(fd, mask)
                else:
                    self._ep.modify(fd, mask)
            except FileExistsError:
                self._ep.modify(fd, mask)
            except FileNotFoundError:
                self._ep.register(fd, mask)
            self._masks[fd] = mask

    def add_reader(self, fd: int, cb: Callable[[], None]) -> None:
        self._readers[fd] = cb
        self._update(fd)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._update(fd)

    def remove_reader_if(self, fd: int, cb: Callable[[], None]) -> None:
        """Remove fd's reader only if it is still `cb` (the fd may have been reused)."""
        if self._readers.get(fd) is cb:
            self.remove_reader(fd)

    def remove_writer_if(self, fd: int, cb: Callable[[], None]) -> None:
        if self._writers.get(fd) is cb:
            self.remove_writer(fd)

    def add_writer(self, fd: int, cb: Callable[[], None]) -> None:
        self._writers[fd] = cb
        self._update(fd)

    def remove_writer(self, fd: int) -> None:
        if self._writers.pop(fd, None) is not None:
            self._update(fd)

    def forget_fd(self, fd: int) -> None:
        """Drop every watch on fd (call before closing it)."""
        self._readers.pop(fd, None)
        self._writers.pop(fd, None)
        if self._masks.pop(fd, None) is not None:
            try:
                self._ep.unregister(fd)
            except OSError:
                pass

    # --- signals ----------------------------------------------------------------------
    def add_signal_handler(self, signum: int, cb: Callable[[int], None]) -> None:
        if self._signal_rfd < 0:
            rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._signal_rfd = rfd
            _signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
            self.add_reader(rfd, self._drain_signals)
        self._signal_handlers[signum] = cb
        _signal.signal(signum, _noop_handler)

    def _drain_signals(self) -> None:
        try:
            data = os.read(self._signal_rfd, 4096)
        except BlockingIOError:
            return
        for signum in dict.fromkeys(data):
            cb = self._signal_handlers.get(signum)
            if cb is not None:
                cb(signum)

    # --- running ----------------------------------------------------------------------
    def stop(self) -> None:
        self._stopping = True

    def run_forever(self) -> None:
        self._stopping = False
        ready = self._ready
        timers = self._timers
        while not self._stopping:
            if ready:
                timeout = 0.0
            elif timers:
                timeout = max(0.0, timers[0].when - time.monotonic())
            else:
                timeout = -1
            try:
                events = self._ep.poll(timeout)
            except InterruptedError:
                events = []
            for fd, mask in events:
                if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    cb = self._readers.get(fd)
                    if cb is not None:
                        ready.append((cb, ()))
                if mask & (select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR):
                    cb = self._writers.get(fd)
                    if cb is not None:
                        ready.append((cb, ()))
            if timers:
                now = time.monotonic()
                while timers and timers[0].when <= now:
                    timer = heapq.heappop(timers)
                    timer.loop = None
                    if timer.cancelled:
                        self._cancelled_timers -= 1
                    else:
                        ready.append((timer.callback, timer.args))
            for _ in range(len(ready)):
                cb, args = ready.popleft()
                cb(*args)

    def run_until_complete(self, aw: Awaitable) -> Any:
        task = aw if isinstance(aw, Future) else Task(aw)  # type: ignore[arg-type]
        if isinstance(task, Task):
            self._main = task
        task.add_done_callback(lambda _f: self.stop())
        self.run_forever()
        return task.result()


def _noop_handler(signum: int, frame: Any) -> None:
    pass


def _no_callback(*args: Any) -> None:
    pass


def _print_orphan(task: Task, err: BaseException) -> None:
    import traceback
    traceback.print_exception(type(err), err, err.__traceback__)


_loop = Loop()


def get_loop() -> Loop:
    return _loop


def spawn(coro: Coroutine, name: str = "") -> Task:
    return Task(coro, name)


# --- awaitables ---------------------------------------------------------------------------
def sleep(delay: float) -> Future:
    fut = Future(private=True)
    timer = _loop.call_later(delay, fut.set_result, None)
    fut.add_done_callback(lambda f: timer.cancel() if f.cancelled() else None)
    return fut


def _fd_ready(fd: int, add: Callable, remove_if: Callable) -> Future:
    fut = Future(private=True)

    def fire() -> None:
        remove_if(fd, fire)
        fut.set_result(None)

    def on_done(f: Future) -> None:
        if f.cancelled():
            remove_if(fd, fire)

    add(fd, fire)
    fut._callbacks.append(on_done)
    return fut


def wait_readable(fd: int) -> Future:
    return _fd_ready(fd, _loop.add_reader, _loop.remove_reader_if)


def wait_writable(fd: int) -> Future:
    return _fd_ready(fd, _loop.add_writer, _loop.remove_writer_if)


async def wait_for(aw: Awaitable, timeout: Optional[float]) -> Any:
    """Await `aw`; raise TimeoutError_ after `timeout` seconds (None = forever).

    A coroutine is run in a task that belongs to this wait: on timeout, or when the waiting
    task is cancelled, that task is cancelled too. A future passed in is left running (a
    shared exit future must survive a waiter that gave up).
    """
    owned = not isinstance(aw, Future)
    fut = Task(aw) if owned else aw  # type: ignore[arg-type]
    try:
        if timeout is None or fut.done():
            return await fut
        waiter = Future(private=True)
        timer = _loop.call_later(timeout, waiter.set_result, False)
        relay = lambda _f: waiter.set_result(True)  # noqa: E731
        fut.add_done_callback(relay)
        try:
            finished = await waiter
        finally:
            timer.cancel()
            fut.remove_done_callback(relay)
        if not finished:
            raise TimeoutError_()
        return fut.result()
    finally:
        if owned and not fut.done():
            fut.cancel()


async def wait_any(*futs: Future) -> None:
    """Return once any of the futures is done (none of them is cancelled)."""
    waiter = Future(private=True)
    wake = lambda _f: waiter.set_result(None)  # noqa: E731
    for fut in futs:
        fut.add_done_callback(wake)
    try:
        await waiter
    finally:
        for fut in futs:
            fut.remove_done_callback(wake)


async def gather(*aws: Awaitable) -> list:
    tasks = [a if isinstance(a, Future) else Task(a) for a in aws]  # type: ignore[arg-type]
    results = []
    for t in tasks:
        results.append(await t)
    return results


class _Workers:
    """Threads for the blocking calls the kernel offers no non-blocking form of (a mount that
    waits for a 9p server, rmtree of a big scratch directory): started on demand, at most
    MAX of them, each ending after IDLE seconds without work. Results come back to the loop
    through an eventfd. Workers run only plain calls: nothing forks while they exist (child
    processes are started with posix_spawn, which is safe in a threaded process)."""

    MAX = 4
    IDLE = 30.0

    def __init__(self) -> None:
        import _queue
        import _thread
        # threading takes the thread that first imports it for the main thread, and at exit
        # the real main thread then waits for that one: a worker importing it (pyroute2 does)
        # would hold the agent's exit up to IDLE seconds. Imported here, on the loop's thread.
        import threading  # noqa: F401

        self._start_thread = _thread.start_new_thread
        self._empty = _queue.Empty
        self.jobs = _queue.SimpleQueue()
        self.results: deque = deque()  # appended by workers; deque.append is atomic
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.threads = 0
        self.pending = 0
        _loop.add_reader(self.efd, self._drain)

    def submit(self, fn: Callable[..., Any], args: tuple) -> Future:
        fut = Future()
        self.jobs.put((fut, fn, args))
        self.pending += 1
        self._grow()
        return fut

    def _grow(self) -> None:
        while self.threads < min(self.pending, self.MAX):
            self.threads += 1
            self._start_thread(self._work, ())

    def _work(self) -> None:
        while True:
            try:
                fut, fn, args = self.jobs.get(timeout=self.IDLE)
            except self._empty:
                self.results.append(None)  # this worker ends
                os.eventfd_write(self.efd, 1)
                return
            try:
                outcome = (fut, fn(*args), None)
            except BaseException as err:  # noqa: BLE001 - handed to the awaiting task
                outcome = (fut, None, err)
            self.results.append(outcome)
            os.eventfd_write(self.efd, 1)

    def _drain(self) -> None:
        try:
            os.eventfd_read(self.efd)
        except BlockingIOError:
            return
        while self.results:
            outcome = self.results.popleft()
            if outcome is None:
                self.threads -= 1
                continue
            fut, value, err = outcome
            self.pending -= 1
            if err is not None:
                fut.set_exception(err)
            else:
                fut.set_result(value)
        self._grow()  # a worker that timed out may have left a job behind


_workers: Optional[_Workers] = None


def run_in_thread(fn: Callable[..., Any], *args: Any) -> Future:
    """Run a blocking call off the event loop; await the returned future for its result.

    Cancelling the awaiting task does not stop the call: it runs to its end and its result
    is dropped, so calls given here must be safe to finish unobserved."""
    global _workers
    if _workers is None:
        _workers = _Workers()
    return _workers.submit(fn, args)


class Event:
    __slots__ = ("_fut",)

    def __init__(self) -> None:
        self._fut = Future()

    def is_set(self) -> bool:
        return self._fut.done()

    def set(self) -> None:
        self._fut.set_result(True)

    def clear(self) -> None:
        if self._fut.done():
            self._fut = Future()

    async def wait(self) -> None:
        fut = self._fut
        if not fut.done():
            # A private future per waiter so one waiter's cancel can't cancel the others.
            mine = Future(private=True)
            cb = lambda _f: mine.set_result(None)  # noqa: E731
            fut.add_done_callback(cb)
            try:
                await mine
            finally:
                fut.remove_done_callback(cb)


class Queue:
    """Unbounded FIFO with an awaitable get."""

    def __init__(self) -> None:
        self._items: deque = deque()
        self._getters: deque[Future] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Any) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(item)
                return
        self._items.append(item)

    async def get(self) -> Any:
        if self._items:
            return self._items.popleft()
        fut = Future(private=True)
        self._getters.append(fut)
        return await fut


# --- socket and fd helpers (non-blocking fds) -----------------------------------------------
async def sock_recv_into(sock: socket.socket, buf: memoryview) -> int:
    while True:
        try:
            return sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            await wait_readable(sock.fileno())


async def sock_recv(sock: socket.socket, n: int) -> bytes:
    while True:
        try:
            return sock.recv(n)
        except (BlockingIOError, InterruptedError):
            await wait_readable(sock.fileno())


async def sock_sendall(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
            view = view[sent:]
        except (BlockingIOError, InterruptedError):
            await wait_writable(sock.fileno())


async def sock_recv_fds(sock: socket.socket, maxfds: int = 1) -> list[int]:
    """Receive file descriptors (SCM_RIGHTS) sent over a Unix socket, then close it."""
    sock.setblocking(False)
    try:
        while True:
            try:
                return fdpass.recv_fds(sock, 16, maxfds)[1]
            except (BlockingIOError, InterruptedError):
                await wait_readable(sock.fileno())
    finally:
        _loop.forget_fd(sock.fileno())
        sock.close()


async def sock_connect(sock: socket.socket, address: Any) -> None:
    try:
        sock.connect(address)
        return
    except (BlockingIOError, InterruptedError):
        pass
    await wait_writable(sock.fileno())
    err = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


async def sock_accept(sock: socket.socket) -> tuple[socket.socket, Any]:
    while True:
        try:
            conn, addr = sock.accept()
            conn.setblocking(False)
            return conn, addr
        except (BlockingIOError, InterruptedError):
            await wait_readable(sock.fileno())


async def fd_read(fd: int, n: int) -> bytes:
    """Read from a non-blocking fd; b'' at EOF (EIO from a pty master counts as EOF)."""
    while True:
        try:
            return os.read(fd, n)
        except (BlockingIOError, InterruptedError):
            await wait_readable(fd)
        except OSError as err:
            if err.errno == errno.EIO:
                return b""
            raise


async def fd_write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except (BlockingIOError, InterruptedError):
            await wait_writable(fd)


class Lock:
    """A FIFO mutex for tasks (`async with lock:`)."""

    def __init__(self) -> None:
        self._locked = False
        self._waiters: deque[Future] = deque()

    def locked(self) -> bool:
        return self._locked

    async def __aenter__(self) -> "Lock":
        if self._locked:
            fut = Future(private=True)
            self._waiters.append(fut)
            try:
                await fut  # ownership is handed over directly by __aexit__
            except BaseException:
                if fut.done() and not fut.cancelled():
                    self._release()  # we were handed the lock but will not use it
                else:
                    try:
                        self._waiters.remove(fut)
                    except ValueError:
                        pass
                raise
        else:
            self._locked = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # stays locked, now owned by that waiter
                return
        self._locked = False
