"""Per-interface counters of a container's network namespace for GetProperties Statistics,
in containerd's v1 `NetworkStat` shape (the LCOWMetrics `network` list), read from
/proc/<pid>/net/dev: no netlink, so statistics never load pyroute2."""
from __future__ import annotations

MAX_INTERFACES = 64  # ~150 bytes each: the reply stays far below 64 KiB

# /proc/net/dev columns: rx bytes packets errs drop fifo frame compressed multicast, tx bytes packets errs drop ...
_FIELDS = (("rx_bytes", 0), ("rx_packets", 1), ("rx_errors", 2), ("rx_dropped", 3),
           ("tx_bytes", 8), ("tx_packets", 9), ("tx_errors", 10), ("tx_dropped", 11))


def parse(text: str) -> list[dict]:
    stats = []
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        values = rest.split()
        if not sep or len(values) < 16:
            continue
        entry: dict = {"interface": name.strip()}
        for key, column in _FIELDS:
            value = int(values[column])
            if value:
                entry[key] = value  # omitempty, as the Go encoder writes it
        stats.append(entry)
        if len(stats) == MAX_INTERFACES:
            break
    return stats


def of_process(pid: int) -> list[dict]:
    """[] when the process is gone."""
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            return parse(f.read())
    except OSError:
        return []
