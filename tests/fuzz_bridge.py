"""A seeded mutation fuzzer for the bridge: valid requests of every type, mutated at random,
sent in correctly framed batches to a running agent.

What it checks: the connection never drops, every frame gets exactly one reply with its
sequence id (the host client treats a second reply or an unknown id as fatal, as hcsshim
does), and every reply passes the host's strict checks.

Mutations: byte flips, insertions (invalid UTF-8 among them), deletions and truncations of
the payload; JSON-aware ones on a value anywhere in the document, JSON-in-string fields
(ContainerConfig, ProcessParameters, Query) included: a value of another type, nesting
1000-5000 levels deep, huge or out-of-range numbers, NaN/Infinity, duplicate keys, keys in
another case, lone surrogates and very long strings; whole-payload deep nesting too.

Harmless by construction: no Shutdown of the UVM (null container id), no storage
ModifySettings on the UVM, UVM processes only `true`/`echo` in `/`; a mutation whose
decoded meaning breaks these (checked with the agent's own parser) is not sent.

Standalone (a long run against a fresh local-mode agent, root needed):
    PYGCS_FUZZ_FRAMES=20000 PYGCS_FUZZ_SEED=123 python3 tests/fuzz_bridge.py [--stdio]
"""
from __future__ import annotations

import copy
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from gcs.host.bridge_client import HEADER, HostBridge, _Pending  # noqa: E402
from gcs.protocol.ids import BRIDGE_PORT, NULL_CONTAINER_ID, RequestId  # noqa: E402

FRAMES_ENV = "PYGCS_FUZZ_FRAMES"
SEED_ENV = "PYGCS_FUZZ_SEED"
ZERO = NULL_CONTAINER_ID
AID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
CID = "fuzz-c1"
SAFE_COMMANDS = frozenset({"true", "echo", "/bin/true", "/bin/echo", "/usr/bin/true", "/usr/bin/echo"})
NO_LISTENER_PORT = 0x50000001  # a stdio port nobody listens on: the dial fails at once
STORAGE_TYPES = frozenset({"MappedVirtualDisk", "SCSIDevice", "VPMemDevice", "CombinedLayers", "MappedDirectory"})
MISSING_ROOTFS = f"/run/gcs/c/{CID}/rootfs-missing"
# JSON-in-string fields, as (path of keys) per request id.
JSON_STRINGS: dict[int, tuple[str, ...]] = {
    RequestId.CREATE: ("ContainerConfig",),
    RequestId.EXECUTE_PROCESS: ("Settings", "ProcessParameters"),
    RequestId.GET_PROPERTIES: ("Query",),
}
_MARK = "@@fuzz-site@@"


# --- corpus: valid requests of every type (protocol.md 3, appendix A) ---------------------
def _env(cid: str = ZERO, **fields: Any) -> dict[str, Any]:
    return {"ContainerId": cid, "ActivityId": AID, **fields}


def _exec(params: dict[str, Any], cid: str = ZERO, relay: Optional[dict[str, int]] = None) -> dict[str, Any]:
    return _env(cid, Settings={"ProcessParameters": json.dumps(params), "VsockStdioRelaySettings": relay or {}})


PATH_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
SPEC = {
    "ociVersion": "1.1.0",
    "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": ["true"], "env": ["PATH=/bin"], "cwd": "/",
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]},
    "root": {"path": MISSING_ROOTFS},
    "hostname": "fuzz",
    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid"]}],
    "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}], "cgroupsPath": "",
              "resources": {"memory": {"limit": 536870912}, "cpu": {"shares": 512, "period": 100000, "quota": -1}}},
    "annotations": {"io.kubernetes.cri.container-type": "sandbox"},
    "windows": {"layerFolders": None},
}
CONFIG = {"SchemaVersion": {"Major": 2, "Minor": 1}, "OciBundlePath": f"/run/gcs/c/{CID}", "OciSpecification": SPEC,
          "ScratchDirPath": f"/run/gcs/c/{CID}/scratch/{CID}"}


def corpus() -> list[tuple[int, dict[str, Any]]]:
    R = RequestId
    return [
        (R.NEGOTIATE_PROTOCOL, {"ContainerId": "", "ActivityId": ZERO, "MinimumVersion": 4, "MaximumVersion": 4}),
        (R.CREATE, _env(CID, ContainerConfig=json.dumps(CONFIG))),
        (R.START, _env(CID)),
        (R.SHUTDOWN_GRACEFUL, _env(CID)),
        (R.SHUTDOWN_FORCED, _env(CID)),
        (R.EXECUTE_PROCESS, _exec({"CommandArgs": ["echo", "fuzz"], "WorkingDirectory": "/", "Environment": PATH_ENV})),
        (R.EXECUTE_PROCESS, _exec({"CommandLine": "true", "WorkingDirectory": "/", "Environment": PATH_ENV,
                                   "CreateInUtilityVM": True}, cid=CID)),
        (R.EXECUTE_PROCESS, _exec({"CommandArgs": ["true"], "EmulateConsole": True, "Environment": PATH_ENV})),
        (R.EXECUTE_PROCESS, _exec({"CommandArgs": ["echo", "x"], "CreateStdOutPipe": True, "Environment": PATH_ENV},
                                  relay={"StdOut": NO_LISTENER_PORT})),
        (R.EXECUTE_PROCESS, _exec({"CreateStdInPipe": True, "CreateStdOutPipe": True}, cid=CID,
                                  relay={"StdIn": NO_LISTENER_PORT, "StdOut": NO_LISTENER_PORT + 1})),
        (R.EXECUTE_PROCESS, _exec({"OciProcess": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": ["true"],
                                                  "env": ["PATH=/bin"], "cwd": "/"}}, cid=CID)),
        (R.WAIT_FOR_PROCESS, _env(ZERO, ProcessId=424242, TimeoutInMs=1)),
        (R.WAIT_FOR_PROCESS, _env(CID, ProcessId=512, TimeoutInMs=0xFFFFFFFF)),
        (R.SIGNAL_PROCESS, _env(ZERO, ProcessId=424242, Options={"Signal": 15})),
        (R.SIGNAL_PROCESS, _env(CID, ProcessId=512)),
        (R.RESIZE_CONSOLE, _env(ZERO, ProcessId=424242, Height=40, Width=120)),
        (R.GET_PROPERTIES, _env(CID, Query=json.dumps({"PropertyTypes": ["ProcessList"]}))),
        (R.GET_PROPERTIES, _env(CID, Query=json.dumps({"PropertyTypes": ["Statistics"]}))),
        (R.GET_PROPERTIES, _env(ZERO, Query=json.dumps({"PropertyTypes": ["ProcessList"]}))),
        (R.MODIFY_SETTINGS, _env(ZERO, Request={"RequestType": "Add", "ResourceType": "Network", "Settings": {
            "NamespaceID": "f2a1", "ID": "6f0e", "MacAddress": "00-15-5D-00-00-01", "DNSServerList": "10.0.0.10",
            "IPConfigs": [{"IPAddress": "10.1.2.3", "PrefixLength": 24}],
            "Routes": [{"NextHop": "10.1.2.1", "DestinationPrefix": "0.0.0.0/0"}]}})),
        (R.MODIFY_SETTINGS, _env(ZERO, Request={"RequestType": "Add", "ResourceType": "VPCIDevice",
                                                "Settings": {"VMBusGUID": AID}})),
        (R.MODIFY_SETTINGS, _env(ZERO, Request={"RequestType": "Update", "ResourceType": "PodCgroupMemoryLimit"})),
        (R.MODIFY_SETTINGS, _env(CID, Request={"RequestType": "Update", "ResourceType": "ContainerConstraints",
                                               "Settings": {"Windows": {}, "Linux": {"memory": {"limit": 536870912},
                                                                                     "cpu": {"shares": 512}}}})),
        (R.DUMP_STACKS, _env(ZERO)),
        (R.DELETE_CONTAINER_STATE, _env(CID)),
        (R.UPDATE_CONTAINER, _env(CID)),
        (R.LIFECYCLE_NOTIFICATION, _env(CID)),
        (R.MODIFY_SERVICE_SETTINGS, _env(ZERO)),
    ]


# --- mutations --------------------------------------------------------------------------
_SWAP_VALUES: list[Any] = [None, True, False, 0, -1, 1.5, 4294967295, "", "fuzz", "\ud800", [], {}, [1, "a"],
                           {"a": 1}, [[[]]], "x" * 70000]
_NUMBERS = ["1" + "0" * 400, "1e999", "-1e999", "1e-999", "18446744073709551616", "9223372036854775808",
            "4294967296", "-2147483649", "-1", "1.5", "-0", "0.0", "9" * 5000, "1E+2", "0x10", "01", "+1", ".5"]
_NAN = ["NaN", "Infinity", "-Infinity", "nan"]
_BAD_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\x00"]


def _deep(rng: random.Random, depth: int) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        return "[" * depth + "]" * depth
    if kind == 1:
        return '{"a":' * depth + "1" + "}" * depth
    if kind == 2:
        return '[{"k":' * (depth // 2) + "null" + "}]" * (depth // 2)
    if kind == 3:
        return "[" * depth  # never closed
    return "[1," * depth + "0" + "]" * depth


def _sites(doc: Any, path: tuple = ()) -> list[tuple]:
    """Every value's path (dict keys and list indexes)."""
    out = [path]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _sites(value, path + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += _sites(value, path + (i,))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _set(doc: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    _get(doc, path[:-1])[path[-1]] = value
    return doc


def _dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"))


class Mutator:
    """Turns a corpus request into the bytes of one mutated payload, deterministically per seed."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.kinds: dict[str, int] = {}

    def mutate(self, ident: int, doc: dict[str, Any]) -> bytes:
        rng = self.rng
        kind = rng.choices(
            ["none", "bytes", "swap", "deep_top", "deep_inner", "deep_value", "number", "nan", "dupkey", "keycase",
             "utf8", "bytes2"],
            weights=[5, 25, 12, 6, 8, 5, 8, 4, 7, 4, 6, 10])[0]
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if kind == "none":
            return (_dumps(doc) + "\n").encode()
        if kind == "deep_top":
            depth = rng.randint(1000, 5000)
            body = _dumps(doc)
            text = ("[" * depth + body + "]" * depth) if rng.random() < 0.5 else ('{"a":' * depth + body + "}" * depth)
            return (text + "\n").encode()
        if kind in ("bytes", "bytes2", "utf8"):
            data = bytearray((_dumps(doc) + "\n").encode())
            for _ in range(1 if kind != "bytes2" else rng.randint(2, 8)):
                self._byte_op(data, utf8=kind == "utf8")
            return bytes(data)
        return self._json_op(kind, ident, doc)

    def _byte_op(self, data: bytearray, utf8: bool) -> None:
        rng = self.rng
        pos = rng.randrange(len(data) + 1)
        if utf8:
            data[pos:pos] = rng.choice(_BAD_UTF8)
            return
        op = rng.randrange(5)
        if op == 0 and data:
            i = min(pos, len(data) - 1)
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        elif op == 2:
            del data[pos:pos + rng.randint(1, 16)]
        elif op == 3:
            del data[pos:]
        else:
            data[pos:pos] = data[pos:pos + rng.randint(1, 32)]

    def _json_op(self, kind: str, ident: int, doc: dict[str, Any]) -> bytes:
        """Mutate one value: in the outer document or in one of its JSON-in-string fields."""
        rng = self.rng
        doc = copy.deepcopy(doc)
        inner_path = JSON_STRINGS.get(ident)
        inner = None
        if inner_path is not None and (kind == "deep_inner" or rng.random() < 0.5):
            try:
                inner = json.loads(_get(doc, inner_path))
            except (KeyError, TypeError, ValueError):
                inner = None
        if kind == "deep_inner" and inner is None:
            kind = "deep_value"
        target = inner if inner is not None else doc
        site = rng.choice(_sites(target))
        target, raw = self._value_op(kind, target, site)
        text = _dumps(target).replace(json.dumps(_MARK), raw, 1) if raw is not None else _dumps(target)
        if inner is not None:
            _set(doc, inner_path, text)
            text = _dumps(doc)
        return (text + "\n").encode()

    def _value_op(self, kind: str, target: Any, site: tuple) -> tuple[Any, Optional[str]]:
        """(the document, raw JSON text to put where the marker is, if any)."""
        rng = self.rng
        if kind == "swap":
            old = _get(target, site)
            choices = [v for v in _SWAP_VALUES if type(v) is not type(old)]
            return _set(target, site, copy.deepcopy(rng.choice(choices))), None
        if kind == "keycase":
            parents = [s for s in _sites(target) if isinstance(_get(target, s), dict) and _get(target, s)]
            if not parents:
                return target, None
            obj = _get(target, rng.choice(parents))
            key = rng.choice(list(obj))
            obj[rng.choice([key.lower(), key.upper(), key.swapcase()])] = obj.pop(key)
            return target, None
        if kind == "dupkey":
            parents = [s for s in _sites(target) if isinstance(_get(target, s), dict) and _get(target, s)]
            if not parents:
                return target, None
            obj = _get(target, rng.choice(parents))
            key = rng.choice(list(obj))
            twin = rng.choice([key, key.lower(), key.upper()])
            other = copy.deepcopy(rng.choice(_SWAP_VALUES[:-1]))
            first, second = (obj[key], other) if rng.random() < 0.5 else (other, obj[key])
            obj[key] = _MARK
            return target, f"{_dumps(first)},{json.dumps(twin)}:{_dumps(second)}"
        if kind in ("deep_inner", "deep_value"):
            raw = _deep(rng, rng.randint(1000, 5000))
        elif kind == "number":
            raw = rng.choice(_NUMBERS)
        else:  # nan
            raw = rng.choice(_NAN)
        return _set(target, site, _MARK), raw


# --- safety: what a mutated request would make the agent do -----------------------------
def harmless(ident: int, payload: bytes) -> bool:
    """False when the agent, decoding this the way it does, would do something we never want
    here (end itself, touch storage, run anything but true/echo)."""
    from gcs.protocol.messages import parse_request
    try:
        req = parse_request(ident, payload)
    except Exception:  # noqa: BLE001 - the agent refuses it while decoding (any error will do)
        return True
    R = RequestId
    if ident in (R.SHUTDOWN_GRACEFUL, R.SHUTDOWN_FORCED):
        return req.container_id != ZERO
    if ident == R.MODIFY_SETTINGS:
        return req.container_id != ZERO or req.resource_type not in STORAGE_TYPES
    if ident == R.EXECUTE_PROCESS:
        return _harmless_exec(req)
    if ident == R.CREATE:
        return _harmless_create(req)
    return True


def _harmless_exec(req: Any) -> bool:
    p = req.params
    for wanted, port in ((p.create_stdin, req.ports.stdin), (p.create_stdout, req.ports.stdout),
                         (p.create_stderr, req.ports.stderr)):
        if wanted and port == BRIDGE_PORT:
            return False  # would connect to the host's bridge listener
    if req.container_id != ZERO and not p.create_in_uvm:
        return True  # a container process: no container can exist (Create is never harmful)
    argv = p.command_args
    if not argv and p.command_line:
        import shlex
        try:
            argv = shlex.split(p.command_line)
        except ValueError:
            return True
    if not argv:
        return True
    return argv[0] in SAFE_COMMANDS and p.working_directory in ("", "/")


def _harmless_create(req: Any) -> bool:
    config = req.container_config
    if config is None:
        return True
    spec = config.data.get("OciSpecification")
    if not isinstance(spec, dict):
        return True
    root = spec.get("root")
    return isinstance(root, dict) and root.get("path") == MISSING_ROOTFS  # a rootfs that never exists


# --- the run ----------------------------------------------------------------------------
@dataclass
class Report:
    seed: int
    budget: int = 0
    frames: int = 0
    replies: int = 0
    drops: int = 0
    unanswered: int = 0
    skipped_unsafe: int = 0
    execs: int = 0
    elapsed: float = 0.0
    violations: list[str] = field(default_factory=list)
    results: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)  # the first error text per HRESULT
    samples: list[str] = field(default_factory=list)  # what preceded each drop

    def ok(self) -> bool:
        return self.drops == 0 and self.unanswered == 0 and not self.violations

    def summary(self) -> str:
        return (f"seed={self.seed} frames={self.frames} replies={self.replies} drops={self.drops} "
                f"unanswered={self.unanswered} violations={len(self.violations)} skipped_unsafe={self.skipped_unsafe} "
                f"execs={self.execs} elapsed={self.elapsed:.1f}s "
                f"rate={self.frames / max(self.elapsed, 1e-9):.0f} frames/s "
                f"(replay: {SEED_ENV}={self.seed} {FRAMES_ENV}={self.budget})")


def frames_budget(default: int) -> int:
    return int(os.environ.get(FRAMES_ENV) or default)


def seed_from_env() -> int:
    value = os.environ.get(SEED_ENV)
    return int(value) if value else random.SystemRandom().randrange(1 << 32)


def send_batch(bridge: HostBridge, frames: list[tuple[int, bytes]]) -> list[tuple[int, int, _Pending, bytes]]:
    """All frames in one write (one read chunk for the agent), every seq registered first."""
    out, data = [], []
    for ident, payload in frames:
        seq = bridge.next_seq()
        pending = _Pending(ident)
        with bridge._lock:
            bridge._pending[seq] = pending
        out.append((seq, ident, pending, payload))
        data.append(_frame(ident, seq, payload))
    bridge.send_bytes(b"".join(data))
    return out


def _frame(ident: int, seq: int, payload: bytes) -> bytes:
    return HEADER.pack(ident, 16 + len(payload), seq) + payload


class Fuzzer:
    def __init__(self, get_bridge: Callable[[], HostBridge], reconnect: Optional[Callable[[], HostBridge]],
                 seed: int, reply_timeout: float = 30.0, max_batch: int = 24) -> None:
        self.get_bridge = get_bridge
        self.reconnect = reconnect
        self.mutator = Mutator(seed)
        self.rng = random.Random(seed ^ 0x5A5A5A5A)
        self.report = Report(seed)
        self.reply_timeout = reply_timeout
        self.max_batch = max_batch
        self.corpus = corpus()
        self._pids: list[int] = []

    def run(self, frames: int) -> Report:
        self.report.budget = frames
        start = time.monotonic()
        try:
            while self.report.frames < frames:
                batch = self._batch(min(self.rng.randint(1, self.max_batch), frames - self.report.frames))
                if not self._exchange(batch):
                    break
                if self._pids and not self._exchange([self._wait_frame(pid) for pid in self._pids], cleanup=True):
                    break
                self._pids.clear()
        finally:
            self.report.elapsed = time.monotonic() - start
            self.report.kinds = dict(self.mutator.kinds)
        return self.report

    def send_corpus(self) -> Report:
        """Every corpus request once, unmutated (warms up what the agent creates lazily)."""
        batch = [(ident, (_dumps(doc) + "\n").encode()) for ident, doc in self.corpus]
        if self._exchange([item for item in batch if harmless(*item)]) and self._pids:
            self._exchange([self._wait_frame(pid) for pid in self._pids], cleanup=True)
        self._pids.clear()
        return self.report

    def _batch(self, n: int) -> list[tuple[int, bytes]]:
        batch = []
        while len(batch) < n:
            ident, doc = self.rng.choice(self.corpus)
            payload = self.mutator.mutate(ident, doc)
            if not harmless(ident, payload):
                self.report.skipped_unsafe += 1
                continue
            batch.append((ident, payload))
        return batch

    @staticmethod
    def _wait_frame(pid: int) -> tuple[int, bytes]:
        return RequestId.WAIT_FOR_PROCESS, (_dumps(_env(ZERO, ProcessId=pid, TimeoutInMs=10000)) + "\n").encode()

    def _exchange(self, batch: list[tuple[int, bytes]], cleanup: bool = False) -> bool:
        """Send a batch and collect every reply; False when the run cannot go on."""
        bridge = self.get_bridge()
        seen = len(bridge.violations)
        try:
            sent = send_batch(bridge, batch)
        except OSError:
            return self._dropped(bridge, batch, len(batch))
        if not cleanup:
            self.report.frames += len(sent)
        deadline = time.monotonic() + self.reply_timeout
        lost = 0
        for seq, ident, pending, payload in sent:
            if not pending.event.wait(max(0.0, deadline - time.monotonic())):
                self.report.unanswered += 1
                self._sample(f"no reply to seq {seq} 0x{ident:08x}: {payload[:200]!r}")
            elif pending.reply is None:
                lost += 1  # the bridge closed first
            elif not cleanup:
                self._count(ident, pending.reply)
        self.report.violations += bridge.violations[seen:]
        if bridge.closed.is_set():
            return self._dropped(bridge, batch, lost)
        return True

    def _count(self, ident: int, reply: dict[str, Any]) -> None:
        self.report.replies += 1
        code = f"0x{reply.get('Result', 0) & 0xFFFFFFFF:08x}"
        self.report.results[code] = self.report.results.get(code, 0) + 1
        if code != "0x00000000":
            self.report.messages.setdefault(code, str(reply.get("ErrorMessage", ""))[:200])
        elif ident == RequestId.EXECUTE_PROCESS:
            self._pids.append(reply["ProcessId"])  # waited for after the batch, as the host does
            self.report.execs += 1

    def _sample(self, text: str) -> None:
        if len(self.report.samples) < 20:
            self.report.samples.append(text)

    def _dropped(self, bridge: HostBridge, batch: list[tuple[int, bytes]], lost: int) -> bool:
        self.report.drops += 1
        self.report.unanswered += lost
        self._sample(f"drop ({bridge.close_reason}) in a batch of {len(batch)}: "
                     + "; ".join(f"0x{i:08x} {p[:80]!r}" for i, p in batch[:4]))
        self._pids.clear()
        if self.reconnect is None:
            return False
        try:
            self.reconnect()
        except Exception as err:  # noqa: BLE001 - the agent is gone
            self._sample(f"reconnect failed: {err!r}")
            return False
        return True


def fuzz(get_bridge: Callable[[], HostBridge], frames: int, seed: int,
         reconnect: Optional[Callable[[], HostBridge]] = None, max_batch: int = 24) -> Report:
    return Fuzzer(get_bridge, reconnect, seed, max_batch=max_batch).run(frames)


def main() -> int:
    import argparse
    import tempfile

    from gcs.host.launcher import LocalUvm

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stdio", action="store_true", help="run the bridge over the agent's stdin/stdout")
    parser.add_argument("--frames", type=int, default=frames_budget(20000))
    parser.add_argument("--seed", type=int, default=seed_from_env())
    parser.add_argument("--no-reconnect", action="store_true", help="stop at the first drop")
    parser.add_argument("--max-batch", type=int, default=24, help="frames per write (1: one frame at a time)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pygcs-fuzz-") as tmp:
        uvm = LocalUvm(os.path.join(tmp, "uvm"), loglevel="info", bridge_stdio=args.stdio)
        try:
            uvm.start()
            reconnect = None if args.stdio or args.no_reconnect else uvm.reconnect
            report = fuzz(lambda: uvm.bridge, args.frames, args.seed, reconnect, args.max_batch)
        finally:
            uvm.stop()
    print(report.summary())
    print("results:", report.results)
    print("mutations:", report.kinds)
    for code, text in sorted(report.messages.items()):
        print(f"  {code}: {text}")
    for line in report.samples[:10]:
        print("  ", line)
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
