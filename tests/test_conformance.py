"""Differential tests: the same OCI specs under the native runtime and under runc (the
oracle); what a process inside observes must be identical."""
import copy
import json
import os
import re
import subprocess

import pytest

from gcs.containers import ocispec
from gcs.host.images import make_layer_image
from gcs.host.launcher import LocalUvm
from gcs.protocol import hresult as hr

from conftest import requires_root
from containers_env import REFUSED_SYSCTLS, Host, busybox_rootfs, default_spec, refused_sysctl_spec
from storage_env import DeviceTree, Loops

pytestmark = requires_root

# What the process reports about itself; each line is compared between the runtimes.
OBSERVE = r"""
echo "pid=$$"; echo "ids=$(id -u) $(id -g) $(id -G)"; echo "host=$(hostname)"; echo "cwd=$(pwd)"
echo "umask=$(umask)"; env | sort | sed 's/^/env:/'
grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp)' /proc/self/status
sed 's/^/limit:/' /proc/self/limits
echo "oom=$(cat /proc/self/oom_score_adj)"
awk '{n=split($0,a," - "); split(a[2],b," "); p=""; for (i=7; $i!="-"; i++) { t=$i; sub(/:.*/,"",t); p=p t };
       print "mount:" $5 " " b[1] " " $6 " " (p=="" ? "private" : p)}' /proc/self/mountinfo | sort
for p in /proc/kcore /proc/keys /proc/acpi /sys/firmware /proc/sys /proc/sysrq-trigger /etc/hostname /custom; do
  if [ -e $p ]; then echo "path:$p $(stat -c '%F' $p) r=$(cat $p >/dev/null 2>&1 && echo y || echo n) w=$(touch $p 2>/dev/null && echo y || echo n)"; else echo "path:$p absent"; fi
done
ls -ln /dev | awk 'NR>1 {print "dev:" $1 " " $3 " " $4 " " $5 $6 " " $NF}' | sort
echo "msgmax=$(cat /proc/sys/kernel/msgmax)"
echo "rootw=$(touch /rootw 2>/dev/null && echo y || echo n)"
echo "lo=$(cat /sys/class/net/lo/flags 2>&1)"
echo "pid1=$(tr '\0' ' ' < /proc/1/cmdline)"
# To a file: a pipeline's pipes would be the shell's while ls runs. (ash lends ls the file
# as its own fd 1 and keeps the real stdout at fd 10 meanwhile.)
ls -ln /proc/$$/fd > /dev/shm/fds
awk 'NR>1 {print "fd:" $9 " " $1 " " $11}' /dev/shm/fds | sed 's/:\[[0-9]*\]$/:[N]/'
for n in 0 1 2; do echo "stdio:$n $(stat -L -c '%u:%g %a %F' /proc/$$/fd/$n)"; done
(: < /dev/stdin) && echo "reopen:stdin y" || echo "reopen:stdin n"
(: > /dev/stdout) && echo "reopen:stdout y" || echo "reopen:stdout n"
(: > /dev/stderr) && echo "reopen:stderr y" || echo "reopen:stderr n"
(echo "echo:stdout y" > /dev/stdout) || echo "echo:stdout n"
awk '$9 ~ /^_ses\./ {print "keyring:" $2 " " $5 " " $6 " " $7 " " $8 " " $9 " " $10}' /proc/keys 2>/dev/null
if [ -d /sys/fs/cgroup/memory ]; then
  echo "cgroups=$(ls /sys/fs/cgroup | tr '\n' ' ')"
  for f in memory/memory.limit_in_bytes memory/memory.soft_limit_in_bytes memory/memory.swappiness \
           cpu/cpu.shares cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us pids/pids.max cpuset/cpuset.cpus; do
    echo "cgroup:$f=$(cat /sys/fs/cgroup/$f 2>&1)"
  done
  sed 's/^/devices:/' /sys/fs/cgroup/devices/devices.list | sort
  echo "cgroupw=$(echo 1 > /sys/fs/cgroup/pids/pids.max 2>/dev/null && echo y || echo n)"
fi
"""
CGROUP_MOUNT = {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}


def variants(root):
    base = default_spec(["sh", "-c", OBSERVE], root)
    out = {"default": copy.deepcopy(base)}
    s = copy.deepcopy(base)
    s["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [2000, 3000], "umask": 0o027}
    s["process"]["cwd"] = "/tmp"
    s["process"]["env"].append("EXTRA=value with spaces")
    s["linux"]["maskedPaths"].remove("/proc/keys")  # its session keyring shows there
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
    s = copy.deepcopy(s)
    s["process"]["user"] = {"uid": 1000, "gid": 1000}  # its pty is the user's, the gid stays devpts's
    s["linux"]["maskedPaths"].remove("/proc/keys")
    out["user-terminal"] = s
    s = copy.deepcopy(base)
    # what runc allows: ipc ones with an ipc namespace, net ones with a network namespace of
    # its own, kernel.domainname with a uts namespace
    s["linux"]["sysctl"] = {"kernel.shmmni": "1234", "fs.mqueue.msg_max": "77", "net.ipv4.ip_forward": "1",
                            "net/ipv4/tcp_syncookies": "0", "kernel.domainname": "example.test"}
    s["process"]["args"] = ["sh", "-c", "for f in kernel/shmmni fs/mqueue/msg_max net/ipv4/ip_forward "
                            "net/ipv4/tcp_syncookies kernel/domainname; do echo \"sysctl:$f=$(cat /proc/sys/$f)\"; "
                            "done; " + OBSERVE]
    out["sysctls"] = s
    s = copy.deepcopy(base)
    s["mounts"].append(copy.deepcopy(CGROUP_MOUNT))
    s["linux"]["resources"] = {
        "memory": {"limit": 64 << 20, "reservation": 32 << 20, "swappiness": 10},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000},
        "pids": {"limit": 99},
        "devices": [{"allow": False, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rwm"},
                    {"allow": False, "type": "c", "major": 1, "minor": 9, "access": "w"}]}
    out["cgroups"] = s
    s = copy.deepcopy(base)
    s["mounts"].append(copy.deepcopy(CGROUP_MOUNT))
    s["linux"]["namespaces"].append({"type": "cgroup"})
    s["linux"]["resources"] = {"memory": {"limit": 80 << 20}, "pids": {"limit": 77}}
    s["linux"]["rootfsPropagation"] = "rshared"
    out["cgroupns"] = s
    s = copy.deepcopy(base)
    s["process"]["user"] = {"uid": 1000, "gid": 1000}
    s["process"]["cwd"] = "/root"  # 0700 root's: entered before the user is taken on, as runc does
    out["private-cwd"] = s
    return out


VARIANTS = ["default", "user", "username", "caps", "limits", "filesystem", "terminal", "user-terminal", "sysctls",
            "cgroups", "cgroupns", "private-cwd"]
SCENARIOS = VARIANTS + ["pod-workload", "exec", "exec-terminal"]


def run_pod(host, runtime):
    """A workload joining its sandbox's namespaces by path; what the workload observes."""
    sb, wl = f"sb-{runtime}", f"wl-{runtime}"
    spec = default_spec(["sleep", "60"], host.layers(sb, ["/run/layers/p0"]))
    spec["hostname"] = "podhost"
    spec["annotations"] = {"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": sb}
    host.create(sb, spec)
    sandbox = host.start(sb, stdout=False, stderr=False)
    spec = default_spec(["sh", "-c", OBSERVE], host.layers(wl, ["/run/layers/p0"]))
    spec.pop("hostname")
    spec["mounts"].append(copy.deepcopy(CGROUP_MOUNT))
    spec["annotations"] = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": sb}
    spec["linux"]["namespaces"] = [{"type": t, "path": f"/proc/{sandbox.pid}/ns/{f}"}
                                   for t, f in (("pid", "pid"), ("ipc", "ipc"), ("uts", "uts"), ("network", "net"))]
    spec["linux"]["namespaces"].append({"type": "mount"})
    host.create(wl, spec)
    out, err, code = host.start(wl).communicate()
    host.notification()
    host.remove(wl)
    sandbox.kill()
    sandbox.wait()
    host.notification()
    host.remove(sb)
    return code, out, err


def run_exec(host, runtime, terminal):
    """A process exec'd into a running container, with its own user, cwd, env and caps."""
    cid = f"ex{int(terminal)}-{runtime}"
    spec = default_spec(["sleep", "60"], host.layers(cid, ["/run/layers/p0"]))
    spec["mounts"].append(copy.deepcopy(CGROUP_MOUNT))
    spec["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 333, "hard": 444}]
    spec["linux"]["resources"] = {"memory": {"limit": 48 << 20}, "pids": {"limit": 55}}
    spec["linux"]["maskedPaths"].remove("/proc/keys")  # the exec joins the init's session keyring
    host.create(cid, spec)
    init = host.start(cid, stdout=False, stderr=False)
    proc = host.exec(cid, ["sh", "-c", ("tty; " if terminal else "") + OBSERVE], terminal=terminal,
                     stderr=not terminal, cwd="/tmp", env=["PATH=/bin:/usr/bin", "EXEC=yes"],
                     user={"uid": 1000, "gid": 1000, "additionalGids": [4000], "umask": 0o077},
                     capabilities={"bounding": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_KILL"],
                                   "permitted": ["CAP_KILL"], "inheritable": [], "ambient": []},
                     noNewPrivileges=True)
    out, err, code = proc.communicate()
    init.kill()
    init.wait()
    host.notification()
    host.remove(cid)
    return code, out, err


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
                results[runtime][name] = (code, out, err)
            results[runtime]["pod-workload"] = run_pod(host, runtime)
            results[runtime]["exec"] = run_exec(host, runtime, terminal=False)
            results[runtime]["exec-terminal"] = run_exec(host, runtime, terminal=True)
            results[runtime] = {name: (code, out.decode().replace("\r\n", "\n"), (err or b"").decode())
                                for name, (code, out, err) in results[runtime].items()}
        finally:
            uvm.stop()
            loops.detach_all()
    return results


# The container whose session keyring a scenario's process should be in ("_ses.<id>").
KEYRING_OF = {"pod-workload": "wl", "exec": "ex0", "exec-terminal": "ex1"}


def normalized(out: str, variant: str) -> str:
    # pid numbers of processes joining an existing pid namespace are an implementation
    # detail (runc's exec passes through helper processes there first).
    out = re.sub(r"^pid=(?!1$)\d+$", "pid=N (not 1)", out, flags=re.M)
    # Its own container's keyring, named for the runtime's container id; a root process
    # sees every other keyring root made too (the sandbox's, other containers' on this machine).
    own = re.escape(KEYRING_OF.get(variant, variant))
    out = re.sub(rf"^(keyring:.* _ses\.{own})-(native|runc):", r"\1-ID:", out, flags=re.M)
    out = re.sub(rf"^keyring:(?!.* _ses\.{own}-ID:).*\n", "", out, flags=re.M)
    if variant.startswith("exec"):
        # runc 1.1 ignores an exec's user.umask (the process keeps runc's 0022); the native
        # runtime applies it, as the runtime spec says. Compared in test_exec_umask instead.
        out = re.sub(r"^umask=\d+$", "umask=(compared elsewhere)", out, flags=re.M)
        # runc 1.1.5's exec races with the Go runtime over RLIMIT_NOFILE and now and then
        # leaves soft = hard (opencontainers/runc#4195, fixed in 1.1.13). Checked in
        # test_exec_umask_and_nofile instead.
        out = re.sub(r"^limit:Max open files .*$", "limit:Max open files (compared elsewhere)", out, flags=re.M)
    return out


@pytest.mark.parametrize("variant", SCENARIOS)
def test_native_matches_runc(observations, variant):
    native_code, native, native_err = observations["native"][variant]
    runc_code, runc, runc_err = observations["runc"][variant]
    native, runc = normalized(native, variant), normalized(runc, variant)
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
    assert "lo=0x9" in runc["default"]  # a new network namespace's loopback is up
    assert "cgroup:memory/memory.limit_in_bytes=67108864" in runc["cgroups"]
    assert "cgroup:cpu/cpu.cfs_quota_us=50000" in runc["cgroups"] and "cgroup:pids/pids.max=99" in runc["cgroups"]
    assert "devices:c 10:200 rwm" in runc["cgroups"] and "devices:a *:* rwm" not in runc["cgroups"]
    assert "cgroupw=n" in runc["cgroups"]
    # its own cgroup namespace: the hierarchies are mounted afresh, showing its cgroup as /
    assert "cgroup:pids/pids.max=77" in runc["cgroupns"] and "mount:/sys/fs/cgroup/pids cgroup ro" in runc["cgroupns"]
    # rootfsPropagation rshared: binds from shared mounts stay shared (and pivot_root still works)
    assert "mount:/etc/hostname tmpfs rw,nosuid,nodev,relatime shared" in runc["cgroupns"]
    assert "mount:/etc/hostname tmpfs rw,nosuid,nodev,relatime private" in runc["default"]
    assert "cwd=/root" in runc["private-cwd"] and "ids=1000 1000 1000" in runc["private-cwd"]
    # the workload is in its sandbox's namespaces: its hostname, its pid 1
    assert "host=podhost" in runc["pod-workload"] and "pid1=sleep 60" in runc["pod-workload"]
    assert "ids=1000 1000 1000 4000" in runc["exec"] and "umask=0022" in runc["exec"]
    assert "CapBnd:\t0000000000000021" in runc["exec"] and "NoNewPrivs:\t1" in runc["exec"]
    assert "cgroup:pids/pids.max=55" in runc["exec"] and "cwd=/tmp" in runc["exec"]
    assert runc["exec-terminal"].startswith("/dev/pts/")
    # open fds: stdio only (fd 10 is the shell's own stdout while ls writes to a file)
    assert [line.split()[0] for line in runc["default"].splitlines() if line.startswith("fd:")] == \
        ["fd:0", "fd:1", "fd:10", "fd:2"]
    # stdio handed to the user (uid only), so that it can reopen /dev/stdout
    assert "stdio:1 1000:0 600 fifo" in runc["user"] and "stdio:1 0:0 600 fifo" in runc["default"]
    assert "reopen:stdout y" in runc["user"] and "echo:stdout y" in runc["user"]
    assert "stdio:0 1000:5 620 character special file" in runc["user-terminal"]
    assert "stdio:2 1000:0 600 fifo" in runc["exec"] and "reopen:stderr y" in runc["exec"]
    # a session keyring of the container's own, searchable by its owner; an exec joins it
    assert "keyring:I--Q--- 3f1b0000 0 0 keyring _ses.user-runc: empty" in runc["user"]
    assert "keyring:I--Q--- 3f1b0000 0 0 keyring _ses.ex0-runc: empty" in runc["exec"]
    assert "sysctl:kernel/shmmni=1234" in runc["sysctls"] and "sysctl:net/ipv4/tcp_syncookies=0" in runc["sysctls"]
    assert "sysctl:kernel/domainname=example.test" in runc["sysctls"]


def test_exec_umask_and_nofile(observations):
    """Where runc 1.1.5 is no oracle for an exec: its user.umask is applied (runc drops it),
    and its RLIMIT_NOFILE is exactly the spec's (runc's is racy)."""
    for variant in ("exec", "exec-terminal"):
        native = observations["native"][variant][1]
        assert "umask=0077" in native
        assert re.search(r"^limit:Max open files +333 +444 +files", native, flags=re.M), native
    assert "umask=0022" in observations["runc"]["exec"][1]


def test_refused_sysctls_match_runc(tmp_path):
    """The oracle itself: `runc create` refuses each of these before it creates anything;
    the agent's check (ocispec.check_sysctls) refuses the same ones, in runc's words."""
    busybox_rootfs(str(tmp_path / "rootfs"))
    state = str(tmp_path / "state")
    for i, (key, kinds) in enumerate(REFUSED_SYSCTLS):
        spec = refused_sysctl_spec(key, kinds, str(tmp_path / "rootfs"))
        with pytest.raises(hr.GcsError) as info:
            ocispec.check_spec(copy.deepcopy(spec))
        assert info.value.hresult == hr.E_INVALIDARG
        bundle = tmp_path / f"b{i}"
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(spec))
        try:
            runc = subprocess.run(["runc", "--root", state, "--log-format", "json", "create", "--bundle", str(bundle),
                                   f"refused{i}"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        finally:
            subprocess.run(["runc", "--root", state, "delete", "--force", f"refused{i}"], capture_output=True)
        assert runc.returncode != 0, f"runc took {key} with {kinds}"
        said = json.loads(runc.stderr.splitlines()[-1])["msg"]
        assert said == "runc create failed: " + str(info.value).split(": ", 1)[1], (key, kinds)
        assert not os.path.exists(os.path.join(state, f"refused{i}"))  # refused before anything
