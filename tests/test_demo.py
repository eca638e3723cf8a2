"""`make run` as a user runs it: the demo boots a UVM under QEMU and runs a container from a
busybox image in it; `demo --local` is the fallback where QEMU cannot run."""
import subprocess

from conftest import installed_gcsctl, requires_root, user_env
from uvm_env import build_image, requires_qemu

pytestmark = requires_root


@requires_qemu
def test_demo_boots_a_uvm_and_runs_a_container(tmp_path):
    build_image()
    r = subprocess.run([installed_gcsctl(), "--uvm", str(tmp_path / "uvm"), "demo"], env=user_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "agent negotiated over vsock" in out and "UVM booted under QEMU" in out
    assert "hello from a container in a utility VM (this file comes from the top layer)" in out
    assert "/data/hello (deleted by the top layer): gone" in out
    assert "/dev/pmem0 on /run/layers/p0 type ext4 (ro," in out and "/dev/pmem1 on /run/layers/p1 type ext4 (ro," in out
    assert "/dev/sda on /run/gcs/c/" in out and "type ext4 (rw," in out
    assert "/bin/gcs -v4" in out and "/init -e 1 /bin/vsockexec -e 109" in out
    assert "container stopped: exit code 137 (ForcedExit)" in out and "(QEMU exit 0)" in out


def test_local_demo(tmp_path):
    r = subprocess.run([installed_gcsctl(), "demo", "--local"], env=user_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "local-mode agent negotiated protocol v4" in r.stdout
    assert "hello from container ctr" in r.stdout and "shutdown -> agent exited with 0" in r.stdout
    # every figure says what it is: no line is a bare number
    assert ", uid 0\n" in r.stdout and "processes in its pid namespace: " in r.stdout
    assert not [line for line in r.stdout.splitlines() if line.strip().isdigit()], r.stdout
