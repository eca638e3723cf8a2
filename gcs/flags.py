"""Command-line flags, parsed the way Go's `flag` package does (-x, --x, -x=v, -x v), so
the agent accepts the host's `/bin/gcs -v4 -log-format json -loglevel info ...` unchanged.
(argparse would also cost a few ms of start-up.)"""
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
        self.runtime = "native"


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
    "runtime": ("runtime", "str"),
    # Accepted for compatibility with the Go GCS; they change nothing here.
    "kmsgLogLevel": ("", "int"),
    "root-mem-reserve-bytes": ("", "int"),
    "gcs-mem-limit-bytes": ("", "int"),
    "initial-policy-stance": ("", "str"),
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
  -loglevel LEVEL   -log-format json   -logfile PATH   -v4   --poweroff=false
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
            if kind in ("int", "float"):
                try:
                    parsed = int(value, 0) if kind == "int" else float(value)
                except ValueError:
                    raise UsageError(f"invalid value {value!r} for -{name}") from None
            else:
                parsed = value
        if field:
            setattr(opts, field, parsed)
    if opts.local and opts.transport.startswith("vsock"):
        raise UsageError("--local refuses --transport vsock: vsock belongs to a VM, not to this machine")
    if not opts.bridge_stdio and not opts.transport:
        raise UsageError(f"choose a transport: --transport vsock or --transport hybrid:PATH\n{USAGE}")
    if opts.runtime not in ("native", "runc"):
        raise UsageError(f"unknown runtime {opts.runtime!r} (native or runc)")
    if opts.bridge_stdio and opts.bridge_listen is not None:
        raise UsageError("--bridge-stdio and --bridge-listen exclude each other")
    return opts
