"""Network namespaces and veth pairs made by the network tests, and a local-mode agent run in
a namespace of its own (the "UVM" namespace): the tests' NICs are veth ends there, found by
MAC, and their peers sit in a peer namespace. Namespaces are held by fds only (no mounts,
nothing in /run/netns): closing the fds frees them and the veths in them."""
import os
import socket
import threading

from gcs.host.launcher import LocalUvm
from gcs.network.netlink import Netlink
from gcs.network.netns import anonymous, entered


class Net:
    """The UVM namespace, a peer namespace, and veth pairs between them."""

    def __init__(self):
        self.uvm = anonymous()
        self.peer = anonymous()
        self.count = 0

    def veth(self, peer_addrs=(), mac=None):
        """A NIC for the agent: (its MAC, its name) in the UVM namespace; the other end in the
        peer namespace, up, with `peer_addrs` [(address, prefix)] (IPv6 without DAD)."""
        self.count += 1
        nic, peer = f"tnic{self.count}", f"tpeer{self.count}"
        mac = mac or "02:7e:57:%02x:%02x:%02x" % (os.getpid() & 0xFF, self.count, os.urandom(1)[0])
        with Netlink(self.uvm) as nl:
            nl.ipr.link("add", ifname=nic, kind="veth", peer=peer, address=mac)
            nl.move(nl.by_name(peer).index, self.peer)
        with Netlink(self.peer) as nl:
            index = nl.by_name(peer).index
            for address, prefix in peer_addrs:
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                kw = {"flags": 0x02} if family == socket.AF_INET6 else {}  # IFA_F_NODAD
                nl.ipr.addr("add", index=index, address=address, prefixlen=prefix, family=family, **kw)
            nl.set_up(index)
        return mac, nic

    def uvm_links(self):
        with Netlink(self.uvm) as nl:
            return {link.name: link for link in nl.links()}

    def uvm_addresses(self, name):
        with Netlink(self.uvm) as nl:
            return nl.addresses(nl.by_name(name).index)

    def close(self):
        for fd in (self.uvm, self.peer):
            os.close(fd)


def start_agent(net, directory, extra_args, negotiate=True):
    """A local-mode agent whose network namespace is `net.uvm` (fork inherits this thread's)."""
    uvm = LocalUvm(directory, extra_args=extra_args)
    with entered(net.uvm):
        uvm.start(negotiate=negotiate)
    return uvm


class EchoServer:
    """A TCP echo: "echo:" + the line each connection sends. It listens in network
    namespace `netns`, or in the test's own (None: this machine's loopback, say)."""

    def __init__(self, netns, address, port=0):
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        if netns is None:
            self.sock = socket.socket(family, socket.SOCK_STREAM)
        else:
            with entered(netns):
                self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.peers = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer)
            with conn:
                conn.settimeout(20)
                try:
                    data = b""
                    while not data.endswith(b"\n") and (chunk := conn.recv(4096)):
                        data += chunk
                    conn.sendall(b"echo:" + data)
                except OSError:
                    pass

    def close(self):
        self.sock.close()
        self.thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def adapter(nsid, mac, aid, ips=(), routes=(), **extra):
    """The host's ModifySettings Network settings (LCOWNetworkAdapter)."""
    settings = {"NamespaceID": nsid, "ID": aid, "MacAddress": mac.replace(":", "-").upper(),
                "IPConfigs": [{"IPAddress": a, "PrefixLength": p} for a, p in ips],
                "Routes": [dict(zip(("DestinationPrefix", "NextHop", "Metric"), r)) for r in routes]}
    settings.update(extra)
    return settings
