"""Command-line flags, parsed the way Go's `flag` package does (-x, --x, -x=v, -x v), so
the agent accepts the host's `/bin/gcs -v4 -log-format json -loglevel info ...` unchanged.
(argparse would also cost a few ms of start-up.)

The Go GCS's own flags either work (in a UVM: gcs/uvmsetup.py) or are named, with why, in
one log line at start (`no_effect`). `-scrub-logs` (the default) holds by construction: no
log line carries an environment, annotations or command arguments (gcs/log.py).
"""
from __future__ import annotations



class UsageError(Exception):
    pass


class Options:
    """The agent's settings (a plain class: dataclasses cost start-up time)."""

    def __init__(self) -> None:
        self.v4 = False
        self.loglevel = "info"
        self.log_format = "json"
        self.logfile = ""
        self.bridge_stdio = False
        self.transport = ""
        self.bridge_listen: int | None = None
        self.local = False
        self.exit_with_parent = False
        self.poweroff = True
        self.disable_time_sync = False
        self.scrub_logs = True
        self.core_dump_location = ""
        self.dev_root = "/"
        self.sys_root = "/"
        self.device_wait = 30.0
        self.nic_wait = 5.0  # upstream's NIC name resolution bound
        self.runtime = "native"
        # The Go GCS's defaults (cmd/gcs/main.go): what a UVM gets when the host gives none.
        self.kmsg_log_level = 4  # kmsg.Warning: relay kernel lines of priority <= 4
        self.root_mem_reserve_bytes = 75 * 1024 * 1024  # /pods limit = RAM - this
        self.gcs_mem_limit_bytes = 50 * 1024 * 1024  # /gcs usage above this is logged
        self.initial_policy_stance = "allow"
        self.given: set[str] = set()  # the flags on the command line, by name as spelled


# flag name -> (Options field, kind)
_FLAGS: dict[str, tuple[str, str]] = {
    "v4": ("v4", "bool"),
    "loglevel": ("loglevel", "str"),
    "log-format": ("log_format", "str"),
    "logfile": ("logfile", "str"),
    "use-inouterr": ("bridge_stdio", "bool"),
    "bridge-stdio": ("bridge_stdio", "bool"),
    "transport": ("transport", "str"),
    "bridge-listen": ("bridge_listen", "int"),
    "local": ("local", "bool"),
    "exit-with-parent": ("exit_with_parent", "bool"),
    "poweroff": ("poweroff", "bool"),
    "disable-time-sync": ("disable_time_sync", "bool"),
    "scrub-logs": ("scrub_logs", "bool"),
    "core-dump-location": ("core_dump_location", "str"),
    "dev-root": ("dev_root", "str"),
    "sys-root": ("sys_root", "str"),
    "device-wait": ("device_wait", "float"),
    "nic-wait": ("nic_wait", "float"),
    "runtime": ("runtime", "str"),
    # The Go GCS's: applied in a UVM after the first reply (gcs/uvmsetup.py); see no_effect().
    "kmsgLogLevel": ("kmsg_log_level", "uint"),
    "root-mem-reserve-bytes": ("root_mem_reserve_bytes", "uint"),
    "gcs-mem-limit-bytes": ("gcs_mem_limit_bytes", "uint"),
    "initial-policy-stance": ("initial_policy_stance", "str"),
}

USAGE = """usage: python -m gcs [flags]
  --transport vsock|vsock:CID|hybrid:PATH   how to reach the host (bridge and stdio)
  --bridge-stdio (-use-inouterr)            run the bridge over stdin/stdout
  --bridge-listen PORT                      accept the bridge on PORT instead of dialling
  --local                                   local mode: own mount+pid namespaces, private /run
  --exit-with-parent                        local mode: end when the process that started us ends
  --dev-root DIR --sys-root DIR             find /dev and /sys entries under DIR (default /)
  --runtime native|runc                     who creates containers (default: native)
  --device-wait SECONDS                     how long to wait for a hot-added device (default 30)
  --nic-wait SECONDS                        how long a Network Add waits for its NIC (default 5)
  -loglevel LEVEL   -log-format json   -logfile PATH   -v4   --poweroff=false
  the Go GCS's, applied in a UVM only: -core-dump-location PATTERN   -kmsgLogLevel N (4)
      -root-mem-reserve-bytes N (75 MiB)   -gcs-mem-limit-bytes N (50 MiB: a warning above it)
  accepted, no effect (logged at start): -disable-time-sync   -scrub-logs=false   -initial-policy-stance deny
"""


def parse(argv: list[str]) -> Options:
    opts = Options()
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in ("-h", "--help", "-help"):
            raise UsageError(USAGE)
        if not arg.startswith("-") or arg in ("-", "--"):
            raise UsageError(f"unexpected argument {arg!r}\n{USAGE}")
        name, has_value, value = arg.lstrip("-").partition("=")
        if name not in _FLAGS:
            raise UsageError(f"flag provided but not defined: -{name}\n{USAGE}")
        field, kind = _FLAGS[name]
        if kind == "bool":
            if has_value and value.lower() not in ("1", "0", "t", "f", "true", "false"):
                raise UsageError(f"invalid boolean value {value!r} for -{name}")
            parsed: object = not has_value or value.lower() in ("1", "t", "true")
        else:
            if not has_value:
                if i >= len(argv):
                    raise UsageError(f"flag needs an argument: -{name}")
                value = argv[i]
                i += 1
            if kind in ("int", "uint", "float"):
                try:
                    parsed = float(value) if kind == "float" else int(value, 0)
                except ValueError:
                    raise UsageError(f"invalid value {value!r} for -{name}") from None
                if kind == "uint" and parsed < 0:  # as Go's flag.Uint64 says
                    raise UsageError(f"invalid value {value!r} for -{name}: parse error")
            else:
                parsed = value
        setattr(opts, field, parsed)
        opts.given.add(name)
    if opts.local and opts.transport.startswith("vsock"):
        raise UsageError("--local refuses --transport vsock: vsock belongs to a VM, not to this machine")
    if not opts.bridge_stdio and not opts.transport:
        raise UsageError(f"choose a transport: --transport vsock or --transport hybrid:PATH\n{USAGE}")
    if opts.runtime not in ("native", "runc"):
        raise UsageError(f"unknown runtime {opts.runtime!r} (native or runc)")
    if opts.bridge_stdio and opts.bridge_listen is not None:
        raise UsageError("--bridge-stdio and --bridge-listen exclude each other")
    if opts.initial_policy_stance not in ("allow", "deny"):  # the Go GCS exits on others too
        raise UsageError(f"unknown initial-policy-stance {opts.initial_policy_stance!r} (allow or deny)")
    if opts.log_format not in ("json", "text"):
        raise UsageError(f"unknown log-format {opts.log_format!r} (json or text)")
    return opts


def in_uvm(opts: Options) -> bool:
    """Whether machine-wide settings (kernel.core_pattern, the root cgroups) are ours to
    write: only in a VM, which is where vsock is used (never on a machine's host side, and
    --local refuses it)."""
    return not opts.local and opts.transport.startswith("vsock")


_LOCAL = "not in a UVM (--local or no vsock transport): "


def no_effect(opts: Options, uvm: bool) -> dict[str, str]:
    """The flags given that change nothing here, each with why (logged once at start)."""
    given = opts.given
    why: dict[str, str] = {}
    if "scrub-logs" in given and not opts.scrub_logs:
        why["scrub-logs"] = ("logs are scrubbed by construction: the agent never logs environments, "
                             "annotations or command arguments, so there is nothing to unscrub")
    if "disable-time-sync" in given:
        why["disable-time-sync"] = "not applicable: the UVM runs no chronyd, so the agent never starts time sync"
    if "initial-policy-stance" in given and opts.initial_policy_stance != "allow":
        why["initial-policy-stance"] = ("no security policy enforcement: every request is allowed, as with "
                                        "allow, and logs are not discarded")
    if "log-format" in given and opts.log_format != "json":
        why["log-format"] = "the agent writes JSON lines only (what the host reads)"
    if not uvm:
        for name, what in (("core-dump-location", "kernel.core_pattern is machine-wide"),
                           ("kmsgLogLevel", "/dev/kmsg is this machine's kernel log"),
                           ("root-mem-reserve-bytes", "the containers' cgroup keeps the default reserve"),
                           ("gcs-mem-limit-bytes", "no memory threshold is watched on the agent's cgroup")):
            if name in given:
                why[name] = _LOCAL + what
    return why
