"""What a container's spec and image may not do to the agent or the UVM: a malformed spec is
answered with the member named (0xC037010D), a sysctl outside the container's namespaces is
refused before anything runs, the image's /etc/passwd and /etc/group are read inside its
rootfs and never through a FIFO, and the cwd is made inside the rootfs."""
import copy
import errno
import os
import stat
import threading
import time

import pytest

from gcs import linux
from gcs.containers import ocispec
from gcs.host.bridge_client import RpcError
from gcs.host.images import make_layer_image
from gcs.protocol import hresult as hr
from gcs.protocol.ids import RequestId

from conftest import requires_root
from containers_env import (REFUSED_SYSCTLS, busybox_rootfs, default_spec, local_host, machine_sysctl,
                            refused_sysctl_spec)

pytestmark = requires_root
DOTS = "../" * 8  # from a rootfs's etc/ (/run/gcs/c/<id>/rootfs/etc) well past the UVM's /


# --- the spec's shape, without an agent ------------------------------------------------------
def rich_spec() -> dict:
    """A spec with something in every member the agent and the runtimes read."""
    spec = default_spec(["sh", "-c", "true"], "/run/gcs/c/x/rootfs")
    spec["process"]["user"].update(additionalGids=[5], umask=0o22)
    spec["process"]["oomScoreAdj"] = 5
    spec["process"]["capabilities"]["inheritable"] = ["CAP_KILL"]
    spec["annotations"] = {"io.microsoft.lcow.rlimitcore": "0;0"}
    spec["linux"]["devices"] = [{"path": "/dev/mine", "type": "c", "major": 1, "minor": 3, "fileMode": 0o640,
                                 "uid": 0, "gid": 0}]
    spec["linux"]["sysctl"] = {"kernel.msgmax": "4096"}
    spec["linux"]["resources"] = {
        "memory": {"limit": 64 << 20, "reservation": 1 << 20, "swappiness": 10},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"},
        "pids": {"limit": 50}, "devices": [{"allow": False, "access": "rwm"},
                                           {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}],
        "blockIO": {"weight": 500, "weightDevice": [{"major": 8, "minor": 0, "weight": 300}],
                    "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1 << 20}]}}
    spec["linux"]["rootfsPropagation"] = "rslave"
    return spec


def members(value, path=()):
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from members(item, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value[:2]):
            yield from members(item, path + (i,))


def mutated(spec: dict, path: tuple, value) -> dict:
    spec = copy.deepcopy(spec)
    target = spec
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return spec


def downstream(spec: dict) -> None:
    """What the agent and the native runtime's child compute from a checked spec (the
    lookups the plan and the child make included: a wrong type there raises TypeError)."""
    ocispec.unsupported_features(spec)
    ocispec.unsupported_resources((spec.get("linux") or {}).get("resources") or {}, cgroup_v2=True)
    ocispec.device_rules(spec)
    ocispec.identity(spec.get("process") or {}, 40)
    for m in spec.get("mounts") or []:
        ocispec.parse_mount_options(m.get("options") or [])
    linux_ = spec.get("linux") or {}
    for ns in linux_.get("namespaces") or []:
        assert ns["type"] + (ns.get("path") or "")
    assert ocispec.PROPAGATION_FLAGS.get(linux_.get("rootfsPropagation") or "", 1)
    for d in linux_.get("devices") or []:
        assert os.makedev(d.get("major", 0), d.get("minor", 0)) >= 0 and (d.get("fileMode") or 0) | stat.S_IFCHR


BAD_VALUES = [True, 7, -1, 1.5, "text", [1], {"x": 1}, None, KeyError]


def test_every_member_malformed_is_answered():
    """Each member of a rich spec replaced by each wrong type (or removed): either the
    check refuses it, naming the member, or nothing downstream fails on it."""
    spec = rich_spec()
    refused = 0
    for path in members(spec):
        if not path or path[0] == "windows":
            continue
        for value in BAD_VALUES:
            bad = mutated(spec, path, value)
            try:
                ocispec.check_spec(bad)
            except hr.GcsError as err:
                assert err.hresult in (hr.INVALID_JSON, hr.E_INVALIDARG), (path, value, err)
                assert str(err).split(": ", 1)[1].startswith(("invalid OCI spec: ", "sysctl ")), (path, value, err)
                refused += 1
                continue
            try:
                downstream(bad)
            except hr.GcsError as err:  # what the native runtime refuses for its own reasons
                assert err.hresult in (hr.E_INVALIDARG, hr.E_NOTIMPL), (path, value, err)
    assert refused > 500


@pytest.mark.parametrize("path, value, member, expected", [
    (("linux", "namespaces", 2), True, "linux.namespaces[2]", "an object, got boolean"),
    (("linux", "namespaces", 0, "type"), KeyError, "linux.namespaces[0].type", "a string, got nothing"),
    (("mounts", 1, "destination"), KeyError, "mounts[1].destination", "a string, got nothing"),
    (("mounts", 1, "options"), "nosuid", "mounts[1].options", "an array, got string"),
    (("process", "args", 1), 5, "process.args[1]", "a string, got number 5"),
    (("process", "env"), "PATH=/bin", "process.env", "an array, got string"),
    (("process", "cwd"), ["/"], "process.cwd", "a string, got array"),
    (("process", "user", "uid"), "0", "process.user.uid", "an unsigned 32-bit integer, got string"),
    (("process", "user", "gid"), 1 << 32, "process.user.gid", "an unsigned 32-bit integer, got number 4294967296"),
    (("process", "rlimits", 0, "hard"), KeyError, "process.rlimits[0].hard", "an unsigned 64-bit integer, got nothing"),
    (("process", "capabilities", "bounding"), "CAP_KILL", "process.capabilities.bounding", "an array, got string"),
    (("linux", "devices", 0, "type"), KeyError, "linux.devices[0].type", "a string, got nothing"),
    (("linux", "resources", "memory", "limit"), "64m", "linux.resources.memory.limit", "a 64-bit integer, got string"),
    (("linux", "resources", "pids", "limit"), 1.5, "linux.resources.pids.limit", "a 64-bit integer, got number 1.5"),
    (("linux", "resources", "blockIO", "throttleReadBpsDevice", 0, "rate"), "1m",
     "linux.resources.blockIO.throttleReadBpsDevice[0].rate", "an unsigned 64-bit integer, got string"),
    (("linux", "resources", "blockIO", "weight"), 1 << 16, "linux.resources.blockIO.weight",
     "an unsigned 16-bit integer, got number 65536"),
    (("linux", "sysctl", "kernel.msgmax"), 4096, "linux.sysctl['kernel.msgmax']", "a string, got number 4096"),
    (("linux", "maskedPaths", 0), None, "linux.maskedPaths[0]", "a string, got null"),
    (("hostname",), False, "hostname", "a string, got boolean"),
    (("root", "path"), 1, "root.path", "a string, got number 1"),
    (("annotations",), ["a"], "annotations", "an object, got array"),
])
def test_malformed_member_is_named(path, value, member, expected):
    with pytest.raises(hr.GcsError) as info:
        ocispec.check_spec(mutated(rich_spec(), path, value))
    assert info.value.hresult == hr.INVALID_JSON
    assert str(info.value).endswith(f"invalid OCI spec: {member}: expected {expected}")


def test_values_refused_before_anything_runs():
    for path, value, words in [(("process", "args", 1), "a\x00b", "NUL"),
                               (("linux", "devices", 0, "type"), "x", "expected one of c, b, u, p"),
                               (("process", "rlimits", 0, "soft"), 2048, "above its hard limit")]:
        with pytest.raises(hr.GcsError) as info:
            spec = mutated(rich_spec(), path, value)
            ocispec.check_spec(spec)
            ocispec.identity(spec["process"], 40)
        assert info.value.hresult == hr.E_INVALIDARG and words in str(info.value), (path, value)
    # an exec's OCI process comes through identity() alone
    with pytest.raises(hr.GcsError) as info:
        ocispec.identity({"args": ["true"], "user": {"uid": -1}}, 40)
    assert info.value.hresult == hr.INVALID_JSON and "process.user.uid" in str(info.value)


def test_nulls_are_absent_and_unlimited_rlimits_are_taken():
    spec = rich_spec()
    spec["linux"]["resources"] = None
    spec["process"]["user"]["umask"] = None
    spec["process"]["rlimits"] = [{"type": "RLIMIT_CORE", "soft": (1 << 64) - 1, "hard": (1 << 64) - 1}]
    ocispec.check_spec(spec)
    assert "resources" not in spec["linux"] and "umask" not in spec["process"]["user"]
    assert ocispec.identity(spec["process"], 40)["rlimits"] == [[4, -1, -1]]  # RLIM_INFINITY as setrlimit takes it


def test_sysctls_allowed_as_runc_allows_them():
    spec = rich_spec()
    spec["linux"]["sysctl"] = {"kernel.shmmax": "1", "fs.mqueue.msg_max": "10", "net.ipv4.ip_forward": "1",
                               "net/ipv4/conf/all/forwarding": "1", "kernel.domainname": "x"}
    ocispec.check_spec(spec)
    for key, kinds in REFUSED_SYSCTLS:
        with pytest.raises(hr.GcsError) as info:
            ocispec.check_spec(refused_sysctl_spec(key, kinds, "/r"))
        assert info.value.hresult == hr.E_INVALIDARG and ocispec.sysctl_name(key) in str(info.value)


def test_child_writes_sysctls_only_in_namespaces_of_its_own():
    """The native child's last line: in the namespaces it started in (the UVM's, here this
    machine's) it writes none, not even one runc allows. The values are this machine's own,
    so that a failure of the check could change nothing."""
    from gcs.containers.native import child

    for key in ("kernel.core_pattern", "kernel/core_pattern", "vm.overcommit_memory", "net.ipv4.ip_forward",
                "kernel.msgmax", "fs.mqueue.msg_max", "kernel.domainname"):
        with pytest.raises(child.ChildError):
            child._apply_sysctl({key: machine_sysctl(key)}, child._namespace_ids())


# --- reading files of an image ---------------------------------------------------------------
@pytest.fixture
def image_tree(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "etc" / "dir").mkdir(parents=True)
    (root / "run").mkdir()
    outside.mkdir()
    (root / "run" / "pw").write_text("inside\n")
    (outside / "pw").write_text("outside\n")
    links = {"rel": DOTS + str(outside / "pw"), "abs": str(outside / "pw"), "abs-in": "/run/pw",
             "climb": "../../../run/pw", "loop": "loop", "magic": "/proc/self/root" + str(outside / "pw")}
    for name, target in links.items():
        os.symlink(target, root / "etc" / name)
    os.mkfifo(root / "etc" / "fifo")
    os.mknod(root / "etc" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (root / "etc" / "big").write_bytes(b"x" * (ocispec.IMAGE_FILE_LIMIT + 1))
    return str(root)


READS = {"rel": None, "abs": None, "abs-in": b"inside\n", "climb": b"inside\n", "loop": None, "magic": None,
         "fifo": None, "null": None, "big": None, "dir": None, "missing": None, "dir/../../../../run/pw": b"inside\n"}


@pytest.mark.parametrize("walk", [False, True], ids=["openat2", "walk"])
def test_image_files_read_inside_the_rootfs(image_tree, monkeypatch, walk):
    """Symlinks and ".." resolve inside the rootfs, anything but a regular file is absent,
    and nothing blocks (a FIFO has no writer here: a plain open would hang this test)."""
    if walk:
        def no_openat2(*args):
            raise OSError(errno.ENOSYS, "no openat2")
        monkeypatch.setattr(linux, "openat2", no_openat2)
    for name, expected in READS.items():
        assert ocispec.read_image_file(image_tree, "etc/" + name) == expected, name


def test_child_reads_regular_files_only(image_tree):
    from gcs.containers.native import child

    os.symlink("fifo", os.path.join(image_tree, "etc", "to-fifo"))
    assert child._read_regular(os.path.join(image_tree, "run", "pw")) == b"inside\n"
    for name in ("fifo", "to-fifo", "null", "dir", "big", "missing"):
        assert child._read_regular(os.path.join(image_tree, "etc", name)) is None, name


# --- over the bridge, both runtimes ----------------------------------------------------------
def tricky_rootfs(path):
    """busybox, with /etc/passwd and /etc/group as symlinks that lead out of the rootfs when
    followed from the agent's side, and a /evil symlink to an absolute path."""
    busybox_rootfs(path)
    run = os.path.join(path, "run")
    for d in ("escape-target", "dotdot-target"):
        os.makedirs(os.path.join(run, d))
    with open(os.path.join(run, "outside-passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
    with open(os.path.join(run, "outside-group"), "w") as f:
        f.write("root:x:0:\napp:x:1000:\nextra:x:2000:app\n")
    for name, target in (("passwd", DOTS + "run/outside-passwd"), ("group", "/run/outside-group")):
        os.unlink(os.path.join(path, "etc", name))
        os.symlink(target, os.path.join(path, "etc", name))
    os.symlink("/run/escape-target", os.path.join(path, "evil"))


def fifo_rootfs(path):
    busybox_rootfs(path)
    for name in ("passwd", "group"):
        os.unlink(os.path.join(path, "etc", name))
        os.mkfifo(os.path.join(path, "etc", name))


@pytest.fixture(scope="module")
def layer_images(tmp_path_factory):
    base = tmp_path_factory.mktemp("hardening")
    images = []
    for name, make in (("plain", busybox_rootfs), ("tricky", tricky_rootfs), ("fifo", fifo_rootfs)):
        make(str(base / name))
        images.append(str(base / f"{name}.img"))
        make_layer_image(str(base / name), images[-1])
    return images


@pytest.fixture(params=["native", "runc"])
def host(request, tmp_path, layer_images):
    with local_host(tmp_path, request.param, layer_images) as h:
        yield h


def run(host, cid, spec, layer=0):
    spec["root"]["path"] = host.layers(cid, [f"/run/layers/p{layer}"])
    host.create(cid, spec, timeout=10)
    out, err, code = host.start(cid).communicate()
    host.notification()
    host.remove(cid)
    return out.decode(), err.decode(), code


def remove_layers(host, root):
    host.modify("CombinedLayers", {"ContainerRootPath": root}, "Remove")


def assert_nothing_left(host, cid):
    stacks = host.bridge.call(RequestId.DUMP_STACKS)["GuestStacks"]
    assert "containers: 0" in stacks
    assert not os.path.exists(host.in_uvm(f"/run/gcs/c/{cid}/config.json"))


def test_malformed_spec_over_the_bridge(host):
    """The member named, INVALID_JSON, nothing made; the agent serves on."""
    cases = [(("mounts", 1, "destination"), KeyError, "mounts[1].destination"),
             (("process", "env", 0), 1, "process.env[0]"),
             (("process", "user", "uid"), "0", "process.user.uid"),
             (("linux", "sysctl", "kernel.msgmax"), 4096, "linux.sysctl['kernel.msgmax']"),
             (("linux", "resources", "memory", "limit"), "64m", "linux.resources.memory.limit")]
    if host.runtime == "native":  # read by the manager itself before any ocispec call for runc (see the report)
        cases += [(("linux", "namespaces", 2), True, "linux.namespaces[2]"),
                  (("linux", "namespaces", 0, "type"), KeyError, "linux.namespaces[0].type"),
                  (("hostname",), True, "hostname"), (("root", "path"), 7, "root.path")]
    root = host.layers("bad", ["/run/layers/p0"])
    good = default_spec(["true"], root)
    good["linux"].update(sysctl={"kernel.msgmax": "8192"}, resources={"memory": {"limit": 64 << 20}})
    for path, value, member in cases:
        with pytest.raises(RpcError) as info:
            host.create("bad", mutated(good, path, value))
        assert info.value.hresult == hr.INVALID_JSON and f"invalid OCI spec: {member}: expected" in str(info.value)
        assert_nothing_left(host, "bad")
    host.create("bad", good)  # and the id is free
    with pytest.raises(RpcError) as info:  # a ContainerConstraints' resources, likewise
        host.bridge.call(RequestId.MODIFY_SETTINGS, container_id="bad", Request={
            "RequestType": "Update", "ResourceType": "ContainerConstraints",
            "Settings": {"Linux": {"memory": {"limit": "1g"}}}})
    assert info.value.hresult == hr.INVALID_JSON and "LinuxResources.memory.limit: expected" in str(info.value)
    assert host.start("bad").communicate()[2] == 0
    host.notification()
    host.remove("bad")


def test_refused_sysctls_before_anything_runs(host):
    """E_INVALIDARG with the sysctl named, as runc words it, for both runtimes (runc itself
    never sees the spec), and no container, files or writes."""
    root = host.layers("sysctl", ["/run/layers/p0"])
    before = {key: machine_sysctl(key) for key, _ in REFUSED_SYSCTLS}
    for key, kinds in REFUSED_SYSCTLS:
        with pytest.raises(RpcError) as info:
            host.create("sysctl", refused_sysctl_spec(key, kinds, root))
        assert info.value.hresult == hr.E_INVALIDARG, (key, kinds)
        assert f'sysctl "{ocispec.sysctl_name(key)}"' in str(info.value)
        assert_nothing_left(host, "sysctl")
    remove_layers(host, root)
    assert {key: machine_sysctl(key) for key, _ in REFUSED_SYSCTLS} == before


def test_sysctls_checked_on_the_spec_that_runs(host):
    """The check sees the namespaces the container gets, not the ones asked for: host
    networking (an annotation) takes the network namespace away after the spec is read,
    and then a net.* sysctl would be the UVM's. The value is this machine's own."""
    spec = default_spec(["readlink", "/proc/self/ns/net"], None)
    spec["annotations"] = {"io.microsoft.virtualmachine.lcow.hostnetwork": "true"}
    spec["linux"]["sysctl"] = {"net.ipv4.ip_forward": machine_sysctl("net.ipv4.ip_forward")}
    spec["root"]["path"] = root = host.layers("hostnet", ["/run/layers/p0"])
    try:
        host.create("hostnet", spec)
    except RpcError as err:  # where host networking is honoured
        assert err.hresult == hr.E_INVALIDARG and 'sysctl "net.ipv4.ip_forward"' in str(err)
        remove_layers(host, root)
        return
    out, err, code = host.start("hostnet").communicate()
    host.notification()
    host.remove("hostnet")
    assert code == 0 and out.decode().strip() != os.readlink(f"/proc/{host.uvm.agent_pid}/ns/net"), err


def test_image_user_files_are_read_inside_the_rootfs(host):
    """/etc/passwd (a relative symlink climbing out) and /etc/group (an absolute one) read
    from the agent resolve inside the rootfs: the UVM's own files at those paths are not
    the container's."""
    for name, text in (("outside-passwd", "app:x:1234:1234::/decoy:/bin/sh\n"),
                       ("outside-group", "app:x:1234:\nleak:x:4242:app\n")):
        with open(host.in_uvm(f"/run/{name}"), "w") as f:
            f.write(text)
    spec = default_spec(["sh", "-c", "id -u; id -g; id -G; echo $HOME"], None, user={"uid": 0, "gid": 0, "username": "app"})
    out, err, code = run(host, "users", spec, layer=1)
    assert (code, out) == (0, "1000\n1000\n1000 2000\n/home/app\n"), err


def test_fifo_passwd_does_not_hang(host):
    """A FIFO at /etc/passwd and /etc/group: the agent answers at once (no such user) and
    keeps serving; a numeric user runs with HOME=/ (the native runtime: runc 1.1.5's init
    opens the FIFO itself and waits for a writer for ever)."""
    root = host.layers("fifo", ["/run/layers/p2"])
    done = threading.Event()
    threading.Thread(target=lambda: (time.sleep(0.5), host.bridge.call(RequestId.DUMP_STACKS, timeout=5),
                                     done.set()), daemon=True).start()
    with pytest.raises(RpcError) as info:
        host.create("fifo", default_spec(["true"], root, user={"uid": 0, "gid": 0, "username": "app"}), timeout=10)
    assert info.value.hresult == hr.E_INVALIDARG and "'app' not found" in str(info.value)
    assert done.wait(5)
    with open(host.uvm.log_path) as f:
        assert "not a regular file" in f.read()
    remove_layers(host, root)
    if host.runtime == "runc":
        return
    # (not `id`: it would open the FIFO itself)
    spec = default_spec(["sh", "-c", "awk '/^Uid/ {print $2}' /proc/self/status; echo $HOME"], None,
                        user={"uid": 1000, "gid": 1000})
    out, err, code = run(host, "fifo2", spec, layer=2)
    assert (code, out) == (0, "1000\n/\n"), err


def test_cwd_made_inside_the_container(host):
    """The cwd is made in the container's own view (as runc makes it, after pivot_root):
    under a mount of the spec's, it is made in that mount."""
    spec = default_spec(["sh", "-c", "pwd; ls -d /scratch/sub/deeper"], None, cwd="/scratch/sub/deeper")
    spec["mounts"].append({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]})
    out, err, code = run(host, "cwd", spec)
    assert (code, out) == (0, "/scratch/sub/deeper\n/scratch/sub/deeper\n"), err


def test_cwd_never_made_outside_the_rootfs(host):
    """A cwd through a symlink to an absolute path, or climbing with "..", is made inside
    the rootfs, never in the UVM (the agent's /run here)."""
    for cid, cwd, made in (("evil", "/evil/sub", "/run/escape-target/sub"),
                           ("dots", "/../../../../../../../run/dotdot-target/sub", "/run/dotdot-target/sub")):
        out, err, code = run(host, cid, default_spec(["pwd"], None, cwd=cwd), layer=1)
        assert (code, out) == (0, made + "\n"), err
        assert not os.path.exists(host.in_uvm(made)), f"{cwd} made {made} in the UVM"
