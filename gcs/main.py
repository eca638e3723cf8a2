"""Agent entry point: flags, local mode, the event loop, the bridge."""
from __future__ import annotations

import os
import sys

from gcs import flags
from gcs.sitepaths import add_site_packages

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: `socket` costs start-up time under TCG
    import socket

    from vmbus.transport import Transport

LOG_FLUSH_TIMEOUT = 1.0  # seconds the exit waits for a log reader that is behind


class NoTransport:
    """With --bridge-stdio and no --transport: stdio relays cannot be dialled."""

    name = "none"

    async def dial(self, port: int):
        raise OSError(107, f"no transport configured to reach port {port} (use --transport)")

    def listen(self, port: int):
        raise OSError(107, "no transport configured")

    async def accept(self, listener):
        raise OSError(107, "no transport configured")


class _Listening:
    """--bridge-listen: the host's connections on our listener, until a signal stops the
    wait; the socket file the listener made is removed when the agent ends."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.name = listener.getsockname()  # a path for a Unix socket, an address tuple for vsock
        from gcs import aio
        self._stopped = aio.Event()

    async def accept(self, transport: Transport) -> socket.socket:
        from gcs import aio
        accepting = aio.spawn(transport.accept(self.listener), "bridge-accept")
        stopped = aio.spawn(self._stopped.wait(), "bridge-accept-stop")
        try:
            await aio.wait_any(accepting, stopped)
        finally:
            stopped.cancel()
        if not accepting.done():
            accepting.cancel()
            raise EOFError  # stopped: ends the bridge's loop as the end of stdio does
        return accepting.result()

    def stop(self) -> None:
        if not self._stopped.is_set():
            self._stopped.set()

    def close(self) -> None:
        self.listener.close()
        if isinstance(self.name, str) and self.name:
            try:
                os.unlink(self.name)
            except OSError:
                pass


def main(argv: list[str] | None = None) -> None:
    try:
        opts = flags.parse(sys.argv[1:] if argv is None else argv)
    except flags.UsageError as err:
        sys.stderr.write(f"{err}\n")
        sys.exit(2)
    add_site_packages()

    from vmbus.transport import parse_transport
    transport = parse_transport(opts.transport) if opts.transport else NoTransport()

    cgroup_base = ""
    if opts.local:
        from gcs import localmode
        cgroup_base = localmode.enter(opts.exit_with_parent)

    from gcs import log as logmod
    if opts.logfile:
        fd = os.open(opts.logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        logmod.configure(opts.loglevel, fd)
    else:
        logmod.configure(opts.loglevel)
    log = logmod.log

    import _prctl  # python-prctl's C layer: the Python wrapper costs ~30 ms under TCG
    _prctl.prctl(_prctl.PR_SET_CHILD_SUBREAPER, 1)

    from gcs import aio
    from gcs.agent import Agent
    from gcs.bridge.connection import Conn
    from gcs.bridge.server import Bridge, dial_bridge
    from gcs.runtime.reaper import Reaper

    loop = aio.get_loop()
    loop.on_orphan_exception = lambda task, err: log.error(
        "task failed", task=task.name, error=repr(err))
    reaper = Reaper(loop)
    shutdown_kind: list[str] = []

    def on_shutdown(kind: str) -> None:
        shutdown_kind.append(kind)
        bridge.stop_after_flush()

    agent = Agent(transport, reaper, on_shutdown, opts.dev_root, opts.sys_root, opts.device_wait,
                  notify=lambda note: bridge.notify(note), runtime=opts.runtime, cgroup_base=cgroup_base,
                  nic_wait=opts.nic_wait)

    if opts.bridge_stdio:
        used = [False]

        async def connect() -> Conn:
            if used[0]:
                raise EOFError
            used[0] = True
            return Conn(0, 1, label="stdio")
    elif opts.bridge_listen is not None:
        listener = transport.listen(opts.bridge_listen)
        listening = _Listening(listener)

        async def connect() -> Conn:
            sock = await listening.accept(transport)
            return Conn.from_socket(sock, f"{transport.name}:listen:{opts.bridge_listen}")
    else:
        async def connect() -> Conn:
            return await dial_bridge(transport)

    bridge = Bridge(agent.handle, connect, reconnect=not opts.bridge_stdio)
    uvm = flags.in_uvm(opts)
    negotiations = [0]

    def on_negotiated() -> None:
        busy = lambda: bool(bridge.in_flight)  # noqa: E731
        agent.warm_up(busy=busy)
        negotiations[0] += 1
        if uvm and negotiations[0] == 1:  # the Go GCS's flags, once, after the first reply
            from gcs import uvmsetup
            uvmsetup.start(opts, agent, busy)

    bridge.on_negotiated = on_negotiated

    def on_term(signum: int) -> None:
        log.info("terminating on signal", signal=signum)
        if opts.bridge_listen is not None:
            listening.stop()  # no host to flush to while waiting for one: end the wait
        on_shutdown("signal")

    import _signal
    loop.add_signal_handler(_signal.SIGTERM, on_term)
    loop.add_signal_handler(_signal.SIGINT, on_term)

    from gcs.bridge.server import since_exec_ms
    log.info("gcs started", pid=os.getpid(), transport=transport.name, local=opts.local, since_exec_ms=since_exec_ms(),
             bridge="stdio" if opts.bridge_stdio else ("listen" if opts.bridge_listen is not None else "dial"))
    ignored = flags.no_effect(opts, uvm)
    if ignored:
        log.info("flags have no effect", flags=sorted(ignored), why=ignored)
    profile_path = os.environ.get("GCS_PROFILE")  # development aid: cProfile stats of the agent
    profiler = None
    if profile_path:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    try:
        loop.run_until_complete(bridge.run())
    except EOFError:
        pass
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile_path)
    if opts.bridge_listen is not None:
        listening.close()
    agent.teardown()
    kind = shutdown_kind[0] if shutdown_kind else "bridge closed"
    log.info("gcs exiting", reason=kind)
    log.flush(LOG_FLUSH_TIMEOUT)  # lines a slow reader left queued, bounded: we are leaving
    if shutdown_kind and shutdown_kind[0] != "signal" and opts.poweroff and not opts.local \
            and transport.name == "vsock":
        # Only ever inside a VM: vsock is never used on a machine's own host side.
        from gcs import linux
        linux.power_off()
    sys.exit(0)
