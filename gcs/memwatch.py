"""A warning in the log when the agent's own cgroup (/gcs) uses more memory than a
threshold (`-gcs-mem-limit-bytes`, 50 MiB by default), as the Go GCS logs it.

The Go GCS does not limit /gcs ("the gcs cgroup is not limited but an event will get
logged if memory usage exceeds 50 MB", cmd/gcs/main.go): a hard limit would have the
kernel kill the agent, the one process the host needs, so neither does this. On cgroup v1
the kernel signals the crossing itself (cgroup.event_control on memory.usage_in_bytes);
v2 has no threshold events, so memory.current is read every second (the Go GCS does too).

UVM only: it writes the /gcs cgroup's control file (gcs/uvmsetup.py decides).
"""
from __future__ import annotations

import os

from gcs import aio
from gcs.log import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from gcs.containers.cgroups import Cgroups

CGROUP = "/gcs"
POLL_INTERVAL = 1.0  # v2: seconds between reads of memory.current
SETTLE = 1.0  # v1: the Go GCS waits this long after the event before it reads the usage


class MemoryWatch:
    def __init__(self, cgroups: Cgroups, threshold: int) -> None:
        self.cgroups = cgroups
        self.threshold = threshold
        self.count = 0
        self._efd = -1
        self._timer = None
        self._above = False

    def start(self) -> None:
        if self.cgroups.v2:
            self._poll()
        else:
            self._register_v1()
        log.debug("watching the agent's memory", cgroup=CGROUP, thresholdBytes=self.threshold,
                  cgroup_version="v2" if self.cgroups.v2 else "v1")

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._efd >= 0:
            aio.get_loop().forget_fd(self._efd)
            os.close(self._efd)
            self._efd = -1

    # --- v1: the kernel's threshold event ---------------------------------------------
    def _register_v1(self) -> None:
        directory = self.cgroups.dirs(CGROUP).get("memory")
        if directory is None:
            raise OSError("no memory controller for the agent's cgroup")
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            usage = os.open(f"{directory}/memory.usage_in_bytes", os.O_RDONLY | os.O_CLOEXEC)
            try:
                # The kernel holds the eventfd; the usage file is needed only while registering.
                with open(f"{directory}/cgroup.event_control", "w") as control:
                    control.write(f"{efd} {usage} {self.threshold}")
            finally:
                os.close(usage)
        except OSError:
            os.close(efd)
            raise
        self._efd = efd
        aio.get_loop().add_reader(efd, self._on_event)

    def _on_event(self) -> None:
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            return
        # v1 signals a crossing either way; only a usage above the threshold is worth a line,
        # and a burst of crossings within SETTLE is one.
        if self._timer is None:
            self._timer = aio.get_loop().call_later(SETTLE, self._report_if_above)

    def _report_if_above(self) -> None:
        self._timer = None
        if self._usage() > self.threshold:
            self._report()

    # --- v2: polling ------------------------------------------------------------------
    def _poll(self) -> None:
        above = self._usage() > self.threshold
        if above and not self._above:  # one line per upward crossing, as v1's event gives
            self._report()
        self._above = above
        self._timer = aio.get_loop().call_later(POLL_INTERVAL, self._poll)

    # --- both -------------------------------------------------------------------------
    def _usage(self) -> int:
        """Bytes in use now (one file read: this runs every second on v2)."""
        if self.cgroups.v2:
            path = self.cgroups.dirs(CGROUP)[""] + "/memory.current"
        else:
            path = self.cgroups.dirs(CGROUP).get("memory", "") + "/memory.usage_in_bytes"
        try:
            with open(path, "rb") as f:
                return int(f.read() or 0)
        except (OSError, ValueError):
            return 0

    def stats(self) -> dict:
        try:
            return self.cgroups.stats(CGROUP).get("memory", {}).get("usage", {})
        except OSError:
            return {}

    def _report(self) -> None:
        self.count += 1
        usage = self.stats()
        log.warning("memory usage for cgroup exceeded threshold", cgroup=CGROUP, thresholdBytes=self.threshold,
                    count=self.count, cgroup_version="v2" if self.cgroups.v2 else "v1",
                    memoryUsage=usage.get("usage", 0),
                    memoryUsageMax=usage.get("max", 0), memoryUsageLimit=usage.get("limit", 0))
