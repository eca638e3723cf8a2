"""`python -m bench reference` as users run it without the Go GCS (CI has none: it is built
outside the repository), and the sandbox it would run the Go GCS in: fresh namespaces whose
/sys/fs/cgroup holds only throwaway directories, removed afterwards."""
import glob
import os
import subprocess
import sys

import pytest

from bench.reference import ENV, MEASURES, Sandbox, bench_reference
from gcs.host.images import attach_loop, detach_loop

from conftest import requires_root

pytestmark = requires_root
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _our_cgroups() -> set:
    """Local-mode agents' cgroup directories under our own cgroup (storage_env.agent_cgroups)."""
    from gcs.localmode import own_cgroup
    return set(glob.glob(f"/sys/fs/cgroup/*{own_cgroup().rstrip('/')}/pygcs-*"))


def test_without_the_reference_our_figures_are_printed_alone(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    cgroups = _our_cgroups()
    rows = []
    bench_reference(str(tmp_path), lambda name, value, unit, target, reference: rows.append((name, value, reference)))
    names = [name for name, _, _ in rows]
    assert names == [name for key, name, _, _ in MEASURES]
    assert all(reference == f"no reference: set {ENV}" for _, _, reference in rows)
    values = {key: value for (key, _, _, _), (_, value, _) in zip(MEASURES, rows)}
    assert 0 < values["round_trip_ms"] < values["exec_ms"] < values["container_ms"]
    assert 0 < values["pss_mib"] < values["rss_mib"] < 100
    assert _our_cgroups() <= cgroups  # each agent ended at EOF and its supervisor removed its cgroups


@pytest.mark.skipif(not os.path.isdir("/sys/fs/cgroup/memory"), reason="the sandbox is made for cgroup v1 here")
def test_the_reference_sandbox_isolates_cgroups_and_devices(tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * (1 << 20))
    loop = attach_loop(str(image))
    sandbox = Sandbox()
    try:
        dirs = [d for _, d in sandbox.dirs]
        assert dirs and all(os.path.basename(d) == f"pygcs-ref-{os.getpid()}" for d in dirs)
        probe = ("import os; print(sorted(os.listdir('/sys/fs/cgroup'))); print(os.getpid()); "
                 "os.mkdir('/sys/fs/cgroup/memory/pods'); print(os.path.exists('/dev/pmem0'), "
                 "os.path.exists('/dev/null'), os.listdir('/run'))")
        out = subprocess.run(sandbox.command([sys.executable, "-c", probe], loop), capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        listing, pid, devices = out.stdout.splitlines()
        assert "unified" not in listing and "memory" in listing  # the real hierarchies are out of sight
        assert pid == "1"  # its own pid namespace
        # the layer as /dev/pmem0, the usual nodes, a private /run (only util-linux's mount table in it)
        assert devices in ("True True []", "True True ['mount']"), devices
        memory = next(d for name, d in sandbox.dirs if name == "memory")
        assert os.path.isdir(os.path.join(memory, "pods"))  # what it made landed in the throwaway directory
    finally:
        sandbox.close()
        detach_loop(loop)
    assert not any(os.path.exists(d) for d in dirs)
    assert not glob.glob(f"/sys/fs/cgroup/*/pygcs-ref-{os.getpid()}")
