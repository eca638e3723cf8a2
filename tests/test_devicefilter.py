"""Device rules on cgroup v2: v1 semantics emulated, compiled to BPF, enforced by the kernel."""
import os

import pytest

from gcs.containers import devicefilter as df
from gcs.containers.cgroups import Cgroups, Hierarchy
from gcs.containers.ocispec import DEFAULT_DEVICE_RULES

from conftest import requires_root

UNIFIED = "/sys/fs/cgroup/unified"  # a hybrid host's v2 hierarchy; the root on a v2-only host


def test_emulation_follows_v1_semantics():
    assert df.emulate([]) == (True, [])
    assert df.emulate(["deny a *:* rwm", "allow c 1:3 rwm"]) == (False, [("c", 1, 3, 7)])
    # accesses add up on one device; a later deny takes some back; an "a" rule starts over
    assert df.emulate(["deny a *:* rwm", "allow c 1:9 r", "allow c 1:9 w", "deny c 1:9 r"]) == \
        (False, [("c", 1, 9, 4)])
    assert df.emulate(["deny a *:* rwm", "allow c 1:3 rwm", "allow a *:* rwm", "deny b 8:* w"]) == \
        (True, [("b", 8, -1, 4)])
    assert df.emulate(["deny a *:* rwm", "allow c *:* m", "deny c 1:3 rwm"])[1] == [("c", -1, -1, 1)]


def _v2_cgroups(base):
    """A Cgroups on the unified hierarchy of this (hybrid) host, as it is on a v2-only UVM."""
    c = Cgroups.__new__(Cgroups)
    c.v2, c.base, c.reserve, c._device_progs = True, base, 0, {}
    c.mounts, c.hierarchies = {"": UNIFIED}, [Hierarchy(UNIFIED, "")]
    return c


def _try_in(cgroup_dir, attempts):
    """Open each (path, flags) from a child process inside the cgroup: "ok" or the errno."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            with open(os.path.join(cgroup_dir, "cgroup.procs"), "w") as f:
                f.write("0")
            out = []
            for path, flags in attempts:
                try:
                    os.close(os.open(path, flags))
                    out.append("ok")
                except OSError as err:
                    out.append(str(err.errno))
            os.write(w, " ".join(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    result = os.read(r, 1000).decode().split()
    os.close(r)
    os.waitpid(pid, 0)
    return result


@requires_root
@pytest.mark.skipif(not os.path.exists(os.path.join(UNIFIED, "cgroup.procs")), reason="no cgroup2 hierarchy here")
def test_v2_device_rules_are_enforced_and_replaced():
    base = f"pygcs-devtest-{os.getpid()}"
    cgroups = _v2_cgroups(base)
    cgroups.create("/pods/c1", {})
    try:
        directory = cgroups.hierarchy_dirs("/pods/c1")[0][1]
        rules = ["allow c 1:9 r", "deny c 1:5 rwm"] + [rule for _, rule in DEFAULT_DEVICE_RULES]
        cgroups.set_devices("/pods/c1", rules)
        attempts = [("/dev/null", os.O_RDWR), ("/dev/urandom", os.O_RDONLY), ("/dev/zero", os.O_RDONLY),
                    ("/dev/loop-control", os.O_RDONLY)]
        # the defaults re-allow /dev/zero (c 1:5) after the spec's deny; loop-control (10:237) is not allowed
        assert _try_in(directory, attempts) == ["ok", "ok", "ok", "1"]
        cgroups.set_devices("/pods/c1", ["allow c 1:3 rw"])  # an update replaces the program
        assert _try_in(directory, attempts) == ["ok", "1", "1", "1"]
        assert list(cgroups._device_progs) == ["/pods/c1"]
    finally:
        cgroups.delete("/", wait=2.0)
    assert not os.path.exists(os.path.join(UNIFIED, base)) and cgroups._device_progs == {}
