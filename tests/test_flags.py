import json
import os
import time

import pytest

from gcs import aio, flags, kmsg, memwatch, uvmsetup
from gcs.flags import UsageError, parse
from gcs.log import LineWriter, log

from conftest import read_log, requires_root


def test_host_command_line_is_accepted():
    o = parse(["-v4", "-log-format", "json", "-loglevel", "info", "-disable-time-sync", "-scrub-logs=false",
               "-core-dump-location", "/tmp/core", "--transport", "vsock"])
    assert o.v4 and o.loglevel == "info" and o.disable_time_sync and not o.scrub_logs
    assert o.transport == "vsock" and o.core_dump_location == "/tmp/core"


def test_go_flag_spellings():
    o = parse(["--loglevel=debug", "-use-inouterr"])
    assert o.loglevel == "debug" and o.bridge_stdio
    o = parse(["-transport=hybrid:/x", "--bridge-listen", "0x40000000", "-local=true"])
    assert o.transport == "hybrid:/x" and o.bridge_listen == 0x40000000 and o.local


def test_local_refuses_vsock():
    with pytest.raises(UsageError, match="vsock"):
        parse(["--local", "--transport", "vsock"])


@pytest.mark.parametrize("argv", [[], ["--nope"], ["-loglevel"], ["--transport", "vsock", "extra"],
                                  ["--transport", "vsock", "-local=maybe"],
                                  ["--bridge-stdio", "--bridge-listen", "5"]])
def test_bad_command_lines(argv):
    with pytest.raises(UsageError):
        parse(argv)


# --- the Go GCS's own flags -------------------------------------------------------------------
GO_FLAGS = ["-core-dump-location", "/tmp/core.%p", "-kmsgLogLevel", "7", "-root-mem-reserve-bytes", "0x10000000",
            "-gcs-mem-limit-bytes=1000", "-disable-time-sync", "-scrub-logs=false", "-initial-policy-stance", "deny"]
ALL_IGNORED_LOCALLY = ["core-dump-location", "disable-time-sync", "gcs-mem-limit-bytes", "initial-policy-stance",
                       "kmsgLogLevel", "root-mem-reserve-bytes", "scrub-logs"]


def test_go_flags_are_parsed_with_go_defaults():
    o = parse(["--transport", "vsock"])
    assert (o.kmsg_log_level, o.root_mem_reserve_bytes, o.gcs_mem_limit_bytes, o.initial_policy_stance) == \
        (4, 75 << 20, 50 << 20, "allow")
    assert o.given == {"transport"}
    o = parse(["--transport", "vsock", *GO_FLAGS])
    assert (o.kmsg_log_level, o.root_mem_reserve_bytes, o.gcs_mem_limit_bytes) == (7, 0x10000000, 1000)
    assert o.core_dump_location == "/tmp/core.%p" and o.initial_policy_stance == "deny"
    assert o.given == {"transport", *ALL_IGNORED_LOCALLY}


@pytest.mark.parametrize("argv", [["-gcs-mem-limit-bytes", "-1"], ["-kmsgLogLevel", "warning"],
                                  ["-initial-policy-stance", "maybe"], ["-log-format", "xml"]])
def test_bad_go_flag_values(argv):
    with pytest.raises(UsageError):
        parse(["--transport", "vsock", *argv])


def test_machine_wide_settings_only_in_a_uvm():
    assert flags.in_uvm(parse(["--transport", "vsock"]))
    assert flags.in_uvm(parse(["--transport", "vsock:3"]))
    assert not flags.in_uvm(parse(["--local", "--transport", "hybrid:/x"]))
    assert not flags.in_uvm(parse(["--transport", "hybrid:/x"]))
    assert not flags.in_uvm(parse(["--bridge-stdio"]))


def test_flags_without_effect_are_named_with_why():
    o = parse(["--local", "--transport", "hybrid:/x", *GO_FLAGS])
    why = flags.no_effect(o, flags.in_uvm(o))
    assert sorted(why) == ALL_IGNORED_LOCALLY and all(why.values())
    assert "core_pattern is machine-wide" in why["core-dump-location"]
    o = parse(["--transport", "vsock", *GO_FLAGS])
    assert sorted(flags.no_effect(o, True)) == ["disable-time-sync", "initial-policy-stance", "scrub-logs"]
    # What the agent does anyway is not "ignored": scrubbing on, an open-door policy, JSON.
    o = parse(["--transport", "vsock", "-scrub-logs", "-initial-policy-stance=allow", "-log-format", "json"])
    assert flags.no_effect(o, True) == {}
    assert flags.no_effect(parse(["--transport", "vsock", "-log-format", "text"]), True).keys() == {"log-format"}


@pytest.fixture
def captured(tmp_path):
    """gcs.log's lines, as records, while the test runs."""
    path = tmp_path / "captured.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    saved, saved_threshold = log.writer, log.threshold
    log.writer, log.threshold = LineWriter(fd, log._dropped_note), 0
    try:
        yield lambda: [json.loads(line) for line in path.read_text().splitlines()]
    finally:
        log.writer, log.threshold = saved, saved_threshold
        os.close(fd)


def test_kmsg_records_are_parsed_as_the_go_gcs_does():
    e = kmsg.parse("4,1283,5234567,-;virtio_net virtio0: something odd\n SUBSYSTEM=virtio\n")
    assert e == {"priority": 4, "facility": 0, "seq": 1283, "timesincebootmicro": 5234567, "flags": "-",
                 "message": "virtio_net virtio0: something odd"}
    assert kmsg.parse("30,7,100,c,more;hello")["facility"] == 3
    assert kmsg.parse("no semicolon") is None and kmsg.parse("a,b,c,d;x") is None


def test_kmsg_lines_at_or_below_the_level_are_relayed(captured):
    relay = kmsg.KmsgRelay(level=4)
    for record in ("3,1,10,-;an error", "4,2,11,-;a warning", "6,3,12,-;just info", "junk"):
        relay._relay(record)
    recs = captured()
    relayed = [r for r in recs if r["msg"] == "kmsg read"]
    assert [(r["priority"], r["message"]) for r in relayed] == [("Err", "an error"), ("Warning", "a warning")]
    assert relayed[0]["level"] == "info" and relayed[0]["seq"] == 1
    assert [r["msg"] for r in recs if r["level"] == "error"] == ["failed to parse kmsg entry"]


class FakeCgroups:
    """Enough of gcs.containers.cgroups.Cgroups: v2, /gcs in a temporary directory."""

    def __init__(self, root, usage: int) -> None:
        self.v2, self.available, self.reserve = True, True, 75 << 20
        self.root = root
        (root / "gcs").mkdir(exist_ok=True)
        self.set_usage(usage)
        self.updates: list = []

    def set_usage(self, usage: int) -> None:
        (self.root / "gcs" / "memory.current").write_text(f"{usage}\n")

    def dirs(self, rel):
        return {"": str(self.root / rel.strip("/"))}

    def stats(self, rel):
        usage = int((self.root / rel.strip("/") / "memory.current").read_text())
        return {"memory": {"usage": {"usage": usage, "max": usage}}}

    def update(self, rel, resources):
        self.updates.append((rel, resources))


def test_gcs_memory_threshold_warns_once_per_crossing(tmp_path, captured, monkeypatch):
    monkeypatch.setattr(memwatch, "POLL_INTERVAL", 0.01)
    cg = FakeCgroups(tmp_path, usage=10 << 20)
    watch = memwatch.MemoryWatch(cg, threshold=20 << 20)
    watch.start()
    try:
        def warnings():
            return [r for r in captured() if r["msg"] == "memory usage for cgroup exceeded threshold"]

        aio.get_loop().run_until_complete(aio.sleep(0.05))
        assert warnings() == []
        cg.set_usage(30 << 20)
        aio.get_loop().run_until_complete(aio.sleep(0.05))
        cg.set_usage(31 << 20)  # still above: no second line
        aio.get_loop().run_until_complete(aio.sleep(0.05))
        cg.set_usage(5 << 20)
        aio.get_loop().run_until_complete(aio.sleep(0.05))
        cg.set_usage(40 << 20)
        aio.get_loop().run_until_complete(aio.sleep(0.05))
        got = warnings()
        assert [(w["count"], w["cgroup"], w["thresholdBytes"], w["level"]) for w in got] == \
            [(1, "/gcs", 20 << 20, "warning"), (2, "/gcs", 20 << 20, "warning")]
        assert got[0]["memoryUsage"] == 30 << 20 and got[0]["cgroup_version"] == "v2"
    finally:
        watch.stop()


def test_gcs_memory_threshold_on_cgroup_v1_uses_the_kernels_event(tmp_path, captured, monkeypatch):
    monkeypatch.setattr(memwatch, "SETTLE", 0.01)
    cg = FakeCgroups(tmp_path, usage=0)
    cg.v2 = False
    cg.dirs = lambda rel: {"memory": str(tmp_path / rel.strip("/"))}
    usage = tmp_path / "gcs" / "memory.usage_in_bytes"
    usage.write_text("1000\n")
    watch = memwatch.MemoryWatch(cg, threshold=5000)
    watch.start()
    try:
        efd, ufd, threshold = (tmp_path / "gcs" / "cgroup.event_control").read_text().split()
        assert int(efd) == watch._efd and threshold == "5000" and not os.path.exists(f"/proc/self/fd/{ufd}")
        os.eventfd_write(watch._efd, 1)  # what the kernel does on a crossing: here, below it
        aio.get_loop().run_until_complete(aio.sleep(0.05))
        usage.write_text("9000\n")
        os.eventfd_write(watch._efd, 1)
        aio.get_loop().run_until_complete(aio.sleep(0.05))
        got = [r for r in captured() if r["msg"] == "memory usage for cgroup exceeded threshold"]
        assert [(w["count"], w["cgroup_version"]) for w in got] == [(1, "v1")]
    finally:
        watch.stop()


def test_root_mem_reserve_sets_the_pods_limit(tmp_path, captured):
    cg = FakeCgroups(tmp_path, usage=0)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    uvmsetup.apply_reserve(cg, 100 << 20)
    assert cg.updates == [("/pods", {"memory": {"limit": total - (100 << 20)}})] and cg.reserve == 100 << 20
    uvmsetup.apply_reserve(cg, total)  # nothing left: the minimum, and a warning
    assert cg.updates[-1] == ("/pods", {"memory": {"limit": uvmsetup.MIN_PODS_LIMIT}})
    assert any(r["level"] == "warning" for r in captured())


def test_core_pattern_is_written_where_it_is_told(tmp_path, monkeypatch, captured):
    target = tmp_path / "core_pattern"  # never the real /proc/sys/kernel/core_pattern here
    monkeypatch.setattr(uvmsetup, "CORE_PATTERN", str(target))
    uvmsetup.set_core_pattern("/run/cores/core.%p")
    assert target.read_text() == "/run/cores/core.%p"
    monkeypatch.setattr(uvmsetup, "CORE_PATTERN", str(tmp_path / "missing" / "core_pattern"))
    uvmsetup.set_core_pattern("x")
    assert [r["msg"] for r in captured() if r["level"] == "error"] == ["failed to set core dump location"]


def test_uvm_setup_runs_each_step_once_no_request_is_in_flight(tmp_path, monkeypatch, captured):
    monkeypatch.setattr(uvmsetup, "CORE_PATTERN", str(tmp_path / "core_pattern"))
    kmsg_levels: list[int] = []
    monkeypatch.setattr(uvmsetup, "start_kmsg", kmsg_levels.append)  # not this machine's kernel log
    cg = FakeCgroups(tmp_path, usage=0)

    class Agent:
        class containers:
            cgroups = cg

    busy = [True]
    uvmsetup.start(parse(["--transport", "vsock", *GO_FLAGS]), Agent(), lambda: busy[0])
    aio.get_loop().run_until_complete(aio.sleep(0.1))
    assert cg.updates == [] and kmsg_levels == [], "nothing runs while a request is in flight"
    busy[0] = False
    aio.get_loop().run_until_complete(aio.sleep(0.2))
    try:
        assert (tmp_path / "core_pattern").read_text() == "/tmp/core.%p"
        assert [u[0] for u in cg.updates] == ["/pods"] and kmsg_levels == [7]
        watches = [w for w in uvmsetup._running if isinstance(w, memwatch.MemoryWatch)]
        assert watches and watches[-1].threshold == 1000
    finally:
        for w in uvmsetup._running:
            w.stop()
        uvmsetup._running.clear()


def _cgroup_roots_snapshot() -> dict:
    from gcs.containers.cgroups import hierarchy_roots
    return {root: sorted(n for n in ("gcs", "pods") if os.path.isdir(os.path.join(root, n)))
            for root in hierarchy_roots()}


@requires_root
def test_local_mode_names_the_ignored_flags_and_writes_nothing_machine_wide(tmp_path):
    from gcs.host.launcher import LocalUvm
    with open("/proc/sys/kernel/core_pattern") as f:
        core_pattern = f.read()
    roots = _cgroup_roots_snapshot()
    u = LocalUvm(str(tmp_path / "uvm"), extra_args=GO_FLAGS)
    u.start()
    try:
        out, _, code = u.client.run(["/bin/echo", "an-argument-42"], env={"SECRET_TOKEN": "hunter2-value"})
        assert (out, code) == (b"an-argument-42\n", 0)
        time.sleep(0.3)  # what a UVM would do after the first reply has had its chance
    finally:
        u.stop()
    recs = [json.loads(line) for line in read_log(u).splitlines()]
    lines = [r for r in recs if r["msg"] == "flags have no effect"]
    assert len(lines) == 1 and lines[0]["flags"] == ALL_IGNORED_LOCALLY
    assert sorted(lines[0]["why"]) == ALL_IGNORED_LOCALLY
    text = read_log(u)
    assert "hunter2-value" not in text and "SECRET_TOKEN" not in text and "an-argument-42" not in text
    msgs = {r["msg"] for r in recs}
    assert not msgs & {"kmsg read", "core dump location set", "containers memory limit set"}
    with open("/proc/sys/kernel/core_pattern") as f:
        assert f.read() == core_pattern
    assert _cgroup_roots_snapshot() == roots
