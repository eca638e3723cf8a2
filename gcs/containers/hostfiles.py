"""The files the GCS writes for a container's networking view (protocol.md 6.7):
hostname, hosts and resolv.conf, and the bind mounts that show them in the container."""
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


def write_files(directory: str, hostname: str, resolv: str = "") -> str:
    if not _HOSTNAME.match(hostname):
        raise hr.GcsError(hr.E_INVALIDARG, f"invalid hostname {hostname[:80]!r}")
    hostname = hostname or socket.gethostname()
    for name, content in (("hostname", hostname + "\n"), ("hosts", hosts_file(hostname)), ("resolv.conf", resolv)):
        with open(os.path.join(directory, name), "w") as f:
            f.write(content)
    return hostname


def add_mounts(spec: dict, directory: str) -> None:
    """Bind the files at /etc/... unless the spec mounts those paths already."""
    mounts = spec.setdefault("mounts", [])
    taken = {m.get("destination") for m in mounts}
    readonly = bool((spec.get("root") or {}).get("readonly"))
    for name in FILES:
        dest = f"/etc/{name}"
        if dest not in taken:
            mounts.append({"destination": dest, "type": "bind", "source": os.path.join(directory, name),
                           "options": ["bind"] + (["ro"] if readonly else [])})
