"""Runs the bridge over a connection: one reader, each request handled concurrently in
its own task, one serialising writer, notifications queued while disconnected, and a
reconnect loop that dials again every 100 ms (protocol.md 1.4, 2.4, 8.2).
"""
from __future__ import annotations

from _collections import deque  # `collections` itself pulls in more than deque

from gcs import aio
from gcs.bridge.connection import Conn
from gcs.log import log
from gcs.protocol.framing import FramingError
from gcs.protocol.hresult import E_FAIL, GcsError
from gcs.protocol.ids import BRIDGE_PORT, describe
from gcs.protocol.session import BridgeSession, ProtocolViolation

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Awaitable, Callable, Optional

    from gcs.protocol.messages import Request
    from gcs.protocol.session import IncomingRequest

    Handler = Callable[[IncomingRequest], Awaitable[dict[str, Any]]]
READ_CHUNK = 256 * 1024
REDIAL_DELAY = 0.1
MAX_QUEUED_NOTIFICATIONS = 10000


class Bridge:
    def __init__(self, handler: Handler, connect: Callable[[], Awaitable[Conn]],
                 reconnect: bool = True) -> None:
        self.handler = handler
        self._connect = connect
        self.reconnect = reconnect
        self.session: Optional[BridgeSession] = None
        self.conn: Optional[Conn] = None
        self._wbuf = bytearray()
        self._pending: deque[dict[str, Any]] = deque()
        # This connection's notifications whose bytes are not all written yet: (the stream
        # offset their frame ends at, the notification); a drop queues them again.
        self._unwritten: deque[tuple[int, dict[str, Any]]] = deque()
        self._appended = self._written = 0  # bytes of this connection's stream
        self.connections = 0
        self.in_flight: set[aio.Task] = set()
        self._stop = aio.Event()
        self._drained = aio.Event()
        self._drained.set()
        self.stopping = False
        self._reader: Optional[aio.Task] = None
        self.on_negotiated: Optional[Callable[[], None]] = None

    # --- lifecycle ------------------------------------------------------------------------
    async def run(self) -> None:
        failures = 0
        while not self.stopping:
            try:
                conn = await self._connect()
            except OSError as err:
                failures += 1
                if failures & (failures - 1) == 0:  # 1st, 2nd, 4th, 8th... failure of a streak
                    log.debug("failed to dial host, retrying", error=str(err), attempts=failures)
                await aio.sleep(REDIAL_DELAY)
                continue
            failures = 0
            self.connections += 1
            log.info("bridge connected", connection=self.connections, via=conn.label)
            try:
                await self._serve(conn)
            finally:
                self._drop(conn)
            if not self.reconnect:
                break
            if not self.stopping:
                await aio.sleep(REDIAL_DELAY)

    def stop_after_flush(self) -> None:
        """Stop serving once everything queued for the host has been written."""
        self.stopping = True
        if self._drained.is_set():
            self._stop.set()

    async def _serve(self, conn: Conn) -> None:
        session = BridgeSession()
        self.session, self.conn = session, conn
        self._wbuf.clear()
        self._unwritten.clear()
        self._appended = self._written = 0
        reader = self._reader = aio.spawn(self._read_loop(conn, session), "bridge-reader")
        stop = aio.spawn(self._stop.wait(), "bridge-stop")
        done = aio.Future()
        for task in (reader, stop):
            task.add_done_callback(lambda _t: done.set_result(None))
        await done
        reader.cancel()
        stop.cancel()

    async def _read_loop(self, conn: Conn, session: BridgeSession) -> None:
        while True:
            try:
                data = await conn.read(READ_CHUNK)
            except OSError as err:
                log.warning("bridge read failed", error=str(err))
                return
            if not data:
                if not session.at_boundary():
                    log.warning("bridge closed in the middle of a message")
                else:
                    log.info("bridge closed by the host")
                return
            was_negotiated = session.negotiated
            try:
                requests = session.receive_data(data)
            except FramingError as err:
                log.error("bridge framing error, dropping the connection", error=str(err))
                self._flush()
                return
            _log_auto_replies(session)
            for req in requests:
                task = aio.spawn(self._handle(req, session), f"request-{req.seq}-{req.name}")
                self.in_flight.add(task)
                task.add_done_callback(self.in_flight.discard)
            if session.negotiated and not was_negotiated:
                self._flush_notifications()
                self._flush()
                if self.connections == 1:
                    log.info("first negotiation answered", since_exec_ms=since_exec_ms())
                if self.on_negotiated is not None:
                    aio.get_loop().call_soon(self.on_negotiated)
            self._flush()

    async def _handle(self, req: IncomingRequest, session: BridgeSession) -> None:
        try:
            reply = await self.handler(req)
            error: Optional[BaseException] = None
        except GcsError as err:
            reply, error = None, err
        except aio.Cancelled:
            raise
        except Exception as err:  # noqa: BLE001 - any bug becomes E_FAIL, never a dead agent
            log.error("request handler failed", request=req.name, seq=req.seq, error=_repr(err), trace=_trace())
            reply, error = None, err
        if session is not self.session:
            log.info("dropping reply for a closed connection", request=req.name, seq=req.seq)
            return
        self._reply(session, req, reply, error)
        self._flush()

    def _reply(self, session: BridgeSession, req: IncomingRequest, reply: Optional[dict[str, Any]],
               error: Optional[BaseException]) -> None:
        """Exactly one reply: whatever answering raises, the request is still answered once."""
        try:
            if error is None:
                session.respond(req, reply)  # type: ignore[arg-type]
                return
            session.respond_error(req, error)
            log.info("request failed", request=req.name, seq=req.seq, error=_str(error), **_ids(req.request))
        except ProtocolViolation as err:
            log.error("second reply refused", request=req.name, seq=req.seq, error=str(err))
        except Exception as err:  # noqa: BLE001 - an unsendable reply becomes an error reply
            log.error("reply failed, answering with an error", request=req.name, seq=req.seq,
                      error=_repr(err), trace=_trace())
            if session.is_outstanding(req.seq):
                session.respond_error(req, GcsError(E_FAIL, f"the reply could not be sent: {_repr(err)}"))

    def _drop(self, conn: Conn) -> None:
        conn.close()
        if self.conn is conn:
            self.session, self.conn = None, None
            self._wbuf.clear()
            # Not (all) written: the host never had them; they go first on the next bridge.
            # (Written ones the host had not read when it went away are lost with its socket.)
            self._pending.extendleft(n for _, n in reversed(self._unwritten))
            if self._unwritten:
                log.info("notifications queued again after a drop", count=len(self._unwritten))
            self._unwritten.clear()
            self._drained.set()
            if self.stopping:
                self._stop.set()

    # --- writing --------------------------------------------------------------------------
    def notify(self, notification: dict[str, Any]) -> None:
        """Send a container notification now, or queue it until the next negotiated bridge."""
        if self.session is not None and self.session.negotiated:
            self._send_notification(notification)
            self._flush()
        else:
            if len(self._pending) >= MAX_QUEUED_NOTIFICATIONS:
                dropped = self._pending.popleft()
                log.error("notification queue full, dropping the oldest", container=dropped.get("ContainerId"))
            self._pending.append(notification)

    def _flush_notifications(self) -> None:
        while self._pending and self.session is not None:
            self._send_notification(self._pending.popleft())

    def _send_notification(self, notification: dict[str, Any]) -> None:
        self.session.notify(notification)
        self._take_data()
        self._unwritten.append((self._appended, notification))

    def _take_data(self) -> None:
        data = self.session.data_to_send()
        if data:
            self._wbuf += data
            self._appended += len(data)

    def _flush(self) -> None:
        session, conn = self.session, self.conn
        if session is None or conn is None:
            return
        _log_auto_replies(session)
        self._take_data()
        self._write_ready()

    def _write_ready(self) -> None:
        conn = self.conn
        if conn is None:
            return
        loop = aio.get_loop()
        while self._wbuf:
            view = memoryview(self._wbuf)
            try:
                n = conn.write_some(view)
            except OSError as err:
                # The traceback still holds the view: released, or the buffer cannot shrink.
                view.release()
                log.warning("bridge write failed", error=str(err))
                self._wbuf.clear()
                loop.remove_writer(conn.write_fd)
                if self._reader is not None:
                    self._reader.cancel()  # ends _serve; the reconnect loop takes over
                return
            view.release()
            if n == 0:
                self._drained.clear()
                loop.add_writer(conn.write_fd, self._write_ready)
                return
            del self._wbuf[:n]
            self._written += n
            while self._unwritten and self._unwritten[0][0] <= self._written:
                self._unwritten.popleft()
        loop.remove_writer(conn.write_fd)
        self._drained.set()
        if self.stopping:
            self._stop.set()


def _log_auto_replies(session: BridgeSession) -> None:
    """What the session answered, changed or held back by itself."""
    for auto in session.auto_replies:
        level = "info" if auto.result == 0 else "warning"
        if auto.kind == "notification":
            log.log(level, "bridge notification changed", detail=auto.message)
            continue
        log.log(level, "bridge replied", seq=auto.seq, request=describe(auto.ident),
                result=f"0x{auto.result:08x}", detail=auto.message)
    session.auto_replies.clear()


def _str(err: BaseException) -> str:
    try:
        return str(err)
    except Exception:  # noqa: BLE001 - a broken __str__ must not cost the request its reply
        return type(err).__name__


def _repr(err: BaseException) -> str:
    try:
        return repr(err)
    except Exception:  # noqa: BLE001
        return type(err).__name__


def _trace() -> str:
    import traceback
    return traceback.format_exc(limit=8)


def _ids(req: Request) -> dict[str, str]:
    return {"container_id": req.container_id} if req.container_id else {}


async def dial_bridge(transport, port: int = BRIDGE_PORT) -> Conn:
    sock = await transport.dial(port)
    return Conn.from_socket(sock, f"{transport.name}:{port}")


def since_exec_ms() -> int:
    """How long ago this process was exec'd (start-up cost as the host sees it)."""
    import os
    import time

    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return -1
    boot_now = time.clock_gettime(time.CLOCK_BOOTTIME)
    return round((boot_now - start_ticks / os.sysconf("SC_CLK_TCK")) * 1000)
