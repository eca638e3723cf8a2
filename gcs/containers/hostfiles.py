"""The files the GCS writes for a container's networking view (protocol.md 6.7):
hostname, hosts and resolv.conf, and the bind mounts that show them in every container of
the pod (the sandbox too, where upstream leaves it without them)."""
from __future__ import annotations

import os
import re
import socket

from gcs.protocol import hresult as hr

_HOSTNAME = re.compile(r"^[a-zA-Z0-9_\-\.]{0,255}$")
FILES = ("hostname", "hosts", "resolv.conf")


def hosts_file(hostname: str) -> str:
    names = hostname + (f" {hostname.split('.')[0]}" if "." in hostname else "")
    return ("127.0.0.1 localhost\n"
            f"127.0.0.1 {names}\n\n"
            "# The following lines are desirable for IPv6 capable hosts\n"
            "::1     ip6-localhost ip6-loopback\n"
            "fe00::0 ip6-localnet\n"
            "ff00::0 ip6-mcastprefix\n"
            "ff02::1 ip6-allnodes\n"
            "ff02::2 ip6-allrouters\n")


MAX_SEARCHES = 6  # upstream refuses more (as glibc once did)


def _unique(values: list[str]) -> list[str]:
    seen: list[str] = []
    for v in values:
        v = v.strip().lower()
        if v and v not in seen:
            seen.append(v)
    return seen


def resolv_conf(searches: list[str], servers: list[str]) -> str:
    """From the pod's adapters' DNSSuffix (a search list) and DNSServerList values: trimmed,
    lower-cased, de-duplicated in order; no options line (upstream's)."""
    searches, servers = _unique(searches), _unique(servers)
    if len(searches) > MAX_SEARCHES:
        raise hr.GcsError(hr.E_INVALIDARG, f"more than {MAX_SEARCHES} DNS search domains: {', '.join(searches)[:200]}")
    return (f"search {' '.join(searches)}\n" if searches else "") + "".join(f"nameserver {s}\n" for s in servers)


def rewrite_resolv(directory: str, content: str) -> None:
    """In place (the same inode): containers see it through their bind mounts."""
    with open(os.path.join(directory, "resolv.conf"), "w") as f:
        f.write(content)


def write_files(directory: str, hostname: str, resolv: str = "") -> str:
    if not _HOSTNAME.match(hostname):
        raise hr.GcsError(hr.E_INVALIDARG, f"invalid hostname {hostname[:80]!r}")
    hostname = hostname or socket.gethostname()
    for name, content in (("hostname", hostname + "\n"), ("hosts", hosts_file(hostname)), ("resolv.conf", resolv)):
        with open(os.path.join(directory, name), "w") as f:
            f.write(content)
    return hostname


def add_mounts(spec: dict, directory: str) -> None:
    """Bind the files at /etc/... unless the spec mounts those paths already; read-only with
    a read-only root (upstream's rule: CRI hosts expect /etc/hosts writable otherwise)."""
    mounts = spec.setdefault("mounts", [])
    taken = {m.get("destination") for m in mounts}
    readonly = bool((spec.get("root") or {}).get("readonly"))
    for name in FILES:
        dest = f"/etc/{name}"
        if dest not in taken:
            mounts.append({"destination": dest, "type": "bind", "source": os.path.join(directory, name),
                           "options": ["bind"] + (["ro"] if readonly else [])})
