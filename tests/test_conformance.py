"""Differential tests: the same OCI specs under the native runtime and under runc (the
oracle); what a process inside observes must be identical."""
import copy

import pytest

from gcs.host.images import make_layer_image
from gcs.host.launcher import LocalUvm

from conftest import requires_root
from containers_env import Host, busybox_rootfs, default_spec
from storage_env import DeviceTree, Loops

pytestmark = requires_root

# What the process reports about itself; each line is compared between the runtimes.
OBSERVE = r"""
echo "pid=$$"; echo "ids=$(id -u) $(id -g) $(id -G)"; echo "host=$(hostname)"; echo "cwd=$(pwd)"
echo "umask=$(umask)"; env | sort | sed 's/^/env:/'
grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp)' /proc/self/status
sed 's/^/limit:/' /proc/self/limits
echo "oom=$(cat /proc/self/oom_score_adj)"
awk '{n=split($0,a," - "); split(a[2],b," "); print "mount:" $5 " " b[1] " " $6}' /proc/self/mountinfo | sort
for p in /proc/kcore /proc/keys /proc/acpi /sys/firmware /proc/sys /proc/sysrq-trigger /etc/hostname /custom; do
  if [ -e $p ]; then echo "path:$p $(stat -c '%F' $p) r=$(cat $p >/dev/null 2>&1 && echo y || echo n) w=$(touch $p 2>/dev/null && echo y || echo n)"; else echo "path:$p absent"; fi
done
ls -ln /dev | awk 'NR>1 {print "dev:" $1 " " $3 " " $4 " " $5 $6 " " $NF}' | sort
echo "msgmax=$(cat /proc/sys/kernel/msgmax)"
echo "rootw=$(touch /rootw 2>/dev/null && echo y || echo n)"
"""


def variants(root):
    base = default_spec(["sh", "-c", OBSERVE], root)
    out = {"default": copy.deepcopy(base)}
    s = copy.deepcopy(base)
    s["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [2000, 3000], "umask": 0o027}
    s["process"]["cwd"] = "/tmp"
    s["process"]["env"].append("EXTRA=value with spaces")
    out["user"] = s
    s = copy.deepcopy(base)
    s["process"]["user"] = {"uid": 1000, "gid": 1000, "username": "app"}
    out["username"] = s
    s = copy.deepcopy(base)
    s["process"]["user"] = {"uid": 1000, "gid": 1000}
    s["process"]["capabilities"] = {
        "bounding": ["CAP_CHOWN", "CAP_NET_RAW", "CAP_SETUID", "CAP_KILL"],
        "permitted": ["CAP_CHOWN", "CAP_NET_RAW", "CAP_KILL"],
        "effective": ["CAP_CHOWN", "CAP_KILL"],
        "inheritable": ["CAP_NET_RAW", "CAP_KILL"],
        "ambient": ["CAP_NET_RAW"],
    }
    s["process"]["noNewPrivileges"] = False
    out["caps"] = s
    s = copy.deepcopy(base)
    s["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 321, "hard": 654},
                               {"type": "RLIMIT_NPROC", "soft": 100, "hard": 200},
                               {"type": "RLIMIT_CORE", "soft": 0, "hard": 1 << 20}]
    s["process"]["oomScoreAdj"] = 250
    s["hostname"] = "other-name"
    out["limits"] = s
    s = copy.deepcopy(base)
    s["root"]["readonly"] = True
    s["linux"]["maskedPaths"] = ["/proc/kcore", "/sys/firmware", "/custom"]
    s["linux"]["readonlyPaths"] = ["/proc/sys"]
    s["linux"]["sysctl"] = {"kernel.msgmax": "4096"}
    s["linux"]["devices"] = [{"path": "/dev/mine", "type": "c", "major": 1, "minor": 3, "fileMode": 0o640,
                              "uid": 5, "gid": 6}]
    s["mounts"].append({"destination": "/mnt/data", "type": "bind", "source": "/run/layers/p0/data",
                        "options": ["rbind", "ro", "nosuid", "nodev"]})
    s["mounts"].append({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
                        "options": ["nosuid", "noexec", "mode=700", "size=1m"]})
    out["filesystem"] = s
    s = copy.deepcopy(base)
    s["process"]["terminal"] = True
    s["process"]["args"] = ["sh", "-c", "tty; " + OBSERVE]
    out["terminal"] = s
    return out


@pytest.fixture(scope="module")
def observations(tmp_path_factory):
    base = tmp_path_factory.mktemp("conf")
    busybox_rootfs(str(base / "rootfs"))
    with open(base / "rootfs" / "custom", "w") as f:
        f.write("secret\n")
    image = str(base / "bb.img")
    make_layer_image(str(base / "rootfs"), image)
    results = {}
    for runtime in ("native", "runc"):
        loops = Loops()
        tree = DeviceTree(str(base / runtime), loops)
        tree.add_pmem(0, image)
        uvm = LocalUvm(str(base / runtime / "uvm"), extra_args=tree.args() + ["--runtime", runtime]).start()
        try:
            host = Host(uvm)
            host.modify("VPMemDevice", {"MountPath": "/run/layers/p0"})
            results[runtime] = {}
            for name, spec in variants(None).items():
                cid = f"{name}-{runtime}"
                root = host.layers(cid, ["/run/layers/p0"])
                spec["root"]["path"] = root
                host.create(cid, spec)
                out, err, code = host.start(cid).communicate()
                host.notification()
                host.remove(cid)
                results[runtime][name] = (code, out.decode().replace("\r\n", "\n"), err.decode())
        finally:
            uvm.stop()
            loops.detach_all()
    return results


@pytest.mark.parametrize("variant", ["default", "user", "username", "caps", "limits", "filesystem", "terminal"])
def test_native_matches_runc(observations, variant):
    native_code, native, native_err = observations["native"][variant]
    runc_code, runc, runc_err = observations["runc"][variant]
    assert runc_code == 0, runc_err
    assert native_code == 0, native_err
    import difflib
    diff = list(difflib.unified_diff(runc.splitlines(), native.splitlines(), "runc", "native", lineterm="", n=0))
    assert not diff, "\n".join(diff)


def test_observations_are_meaningful(observations):
    """Guard against comparing two empty outputs: the oracle shows what the spec asked for."""
    runc = {name: out for name, (_, out, _) in observations["runc"].items()}
    assert "pid=1" in runc["default"] and "ids=0 0 0" in runc["default"]
    assert "ids=1000 1000 1000 2000 3000" in runc["user"] and "umask=0027" in runc["user"]
    assert "ids=1000 1000 1000 2000" in runc["username"]
    # non-root after exec: only the ambient NET_RAW survives; the bounding set is as asked
    assert "CapEff:\t0000000000002000" in runc["caps"] and "CapAmb:\t0000000000002000" in runc["caps"]
    assert "CapBnd:\t00000000000020a1" in runc["caps"] and "CapBnd:\t0000000020000420" in runc["default"]
    assert "host=other-name" in runc["limits"] and "oom=250" in runc["limits"]
    assert "msgmax=4096" in runc["filesystem"] and "rootw=n" in runc["filesystem"]
    assert "path:/custom character special file" in runc["filesystem"]  # masked with /dev/null
    assert "path:/custom regular file" in runc["default"]
    assert "dev:crw-r----- 5 6 1,3 mine" in runc["filesystem"]
    assert "mount:/mnt/data ext4 ro,nosuid,nodev" in runc["filesystem"]
    assert runc["terminal"].startswith("/dev/pts/0\n") and "mount:/dev/console devpts" in runc["terminal"]
