"""What the Go GCS's flags set up in a UVM, done after the first reply (the host waits for
that one; nothing here is needed before it): kernel.core_pattern (`-core-dump-location`),
the containers' memory reserve (`-root-mem-reserve-bytes`), the memory threshold of the
agent's own cgroup (`-gcs-mem-limit-bytes`) and the kernel log relay (`-kmsgLogLevel`).

Called only when flags.in_uvm(): each step writes or reads machine-wide state, which on
any other machine belongs to that machine (flags.no_effect() names them there instead).
Steps run one at a time while no request is in flight, like the agent's warm-up.
"""
from __future__ import annotations

import os

from gcs import aio
from gcs.log import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

    from gcs.agent import Agent
    from gcs.flags import Options

FIRST_DELAY = 0.01  # after NegotiateProtocol: let the agent's own warm-up go first
STEP_GAP = 0.001
RETRY = 0.02  # while a request is in flight
CORE_PATTERN = "/proc/sys/kernel/core_pattern"
MIN_PODS_LIMIT = 64 << 20  # as Cgroups.setup clamps it

_running: list[object] = []  # the watchers started, kept alive (and reachable from tests)


def start(opts: Options, agent: Agent, busy: Callable[[], bool]) -> None:
    steps: list[Callable[[], None]] = []
    if opts.core_dump_location:
        steps.append(lambda: set_core_pattern(opts.core_dump_location))
    steps.append(lambda: setup_memory(agent, opts.root_mem_reserve_bytes, opts.gcs_mem_limit_bytes))
    steps.append(lambda: start_kmsg(opts.kmsg_log_level))
    run_when_idle(steps, busy)


def run_when_idle(steps: list[Callable[[], None]], busy: Callable[[], bool]) -> None:
    loop = aio.get_loop()

    def step() -> None:
        if busy():
            loop.call_later(RETRY, step)
            return
        fn = steps.pop(0)
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - a failed setting must not end the agent
            log.error("UVM setting failed", error=str(err))
        if steps:
            loop.call_later(STEP_GAP, step)

    loop.call_later(FIRST_DELAY, step)


def set_core_pattern(pattern: str) -> None:
    """Where process core dumps go, for every container (a kernel setting: the Go GCS
    writes it at start and exits if it cannot)."""
    try:
        with open(CORE_PATTERN, "w") as f:
            f.write(pattern)
    except OSError as err:
        log.error("failed to set core dump location", path=pattern, error=err.strerror)
        return
    log.info("core dump location set", path=pattern)


def setup_memory(agent: Agent, reserve: int, threshold: int) -> None:
    try:
        cgroups = agent.containers.cgroups  # sets up /gcs and /pods if the warm-up did not yet
    except Exception:  # noqa: BLE001 - the agent's warm-up already logged why
        return
    if cgroups is None or not cgroups.available:
        return
    if reserve != cgroups.reserve:
        apply_reserve(cgroups, reserve)
    if threshold > 0:  # 0: no threshold (a v1 event at 0 would fire at once)
        from gcs.memwatch import MemoryWatch
        watch = MemoryWatch(cgroups, threshold)
        watch.start()
        _running.append(watch)


def apply_reserve(cgroups, reserve: int) -> None:
    """/pods may use all memory but `reserve` (the Go GCS: total - reserve)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = total - reserve
    if limit < MIN_PODS_LIMIT:
        log.warning("root-mem-reserve-bytes leaves too little for containers; limit kept at the minimum",
                    total=total, reserve=reserve, limit=MIN_PODS_LIMIT)
        limit = MIN_PODS_LIMIT
    cgroups.reserve = reserve
    cgroups.update("/pods", {"memory": {"limit": limit}})
    log.info("containers memory limit set", limit=limit, reserve=reserve)


def start_kmsg(level: int) -> None:
    from gcs.kmsg import KmsgRelay
    relay = KmsgRelay(level)
    try:
        relay.start()
    except OSError as err:
        log.error("failed to open /dev/kmsg", error=err.strerror)
        return
    _running.append(relay)
