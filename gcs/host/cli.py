"""gcsctl: drive a guest compute service from the host side.

`up` boots a utility VM under QEMU for a directory (`start`: a local-mode agent instead)
with a small broker that holds the agent's one bridge and the VM's devices, as HCS does;
every other command connects to the broker, so any number of them (a console, a ps, an
exec, a run) can share one UVM at once. Stdio travels over hybrid vsock sockets
`DIR/vsock_<port>` straight between the agent and the command.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional

from gcs.host.bridge_client import BridgeClosed, HostBridge, RpcError
from gcs.host.broker import ctl_path
from gcs.host.launcher import agent_env
from gcs.host.processes import FIRST_STDIO_PORT, GuestProcess, ProcessClient
from gcs.protocol.ids import RequestId

DEFAULT_UVM = os.environ.get("GCSCTL_UVM", "/tmp/gcsctl-uvm")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND = 126, 127  # docker exec's (and a shell's)


class CliError(SystemExit):
    """What the user is told: one line on stderr (prefixed with the command) and `status`.
    A SystemExit, so that where a caller of these functions does not catch it (bench), the
    message still ends the program as one line."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class Session:
    """A connection to the UVM's broker, which holds the one bridge to the agent."""

    def __init__(self, uvm_dir: str) -> None:
        self.dir = os.path.abspath(uvm_dir)
        self.vsock = os.path.join(self.dir, "vsock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(ctl_path(self.dir))
        except OSError:
            sock.close()
            raise CliError(f"no UVM at {self.dir} (start one: 'gcsctl --uvm {uvm_dir} start', "
                           f"or 'up' for a QEMU UVM)") from None
        self.bridge = HostBridge.over_socket(sock)
        self.bridge.negotiate()
        # Commands share the bridge, so each takes its own range of stdio ports.
        self.client = ProcessClient(self.bridge, self.vsock, FIRST_STDIO_PORT + (os.getpid() << 6))

    def close(self) -> None:
        self.bridge.close()


def _pid_file(uvm_dir: str) -> str:
    return os.path.join(uvm_dir, "broker.pid")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _start_broker(uvm_dir: str, options: dict, timeout: float) -> int:
    """Run the broker as a daemon for uvm_dir; returns its pid once the UVM is up."""
    import json

    os.makedirs(uvm_dir, exist_ok=True)
    with open(os.path.join(uvm_dir, "broker.log"), "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gcs.host.broker", uvm_dir, json.dumps(options)],
                                env=agent_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=log, start_new_session=True)
    assert proc.stdout is not None
    ready = [b""]
    reader = threading.Thread(target=lambda: ready.__setitem__(0, proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if ready[0].strip() != b"ready":
        if proc.poll() is None:
            proc.terminate()
        proc.wait(30)
        why = ready[0].decode(errors="replace").strip().removeprefix("failed: ") or "no answer in time"
        raise CliError(f"the UVM did not start: {why} (logs in {uvm_dir})")
    proc.stdout.close()
    with open(_pid_file(uvm_dir), "w") as f:
        f.write(str(proc.pid))
    return proc.pid


def _running_broker(uvm_dir: str) -> Optional[int]:
    try:
        pid = int(open(_pid_file(uvm_dir)).read())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _say_if_running(uvm_dir: str) -> bool:
    pid = _running_broker(uvm_dir)
    if pid:
        print(f"UVM already running (broker pid {pid})")
    return bool(pid)


def cmd_start(args: argparse.Namespace) -> int:
    uvm_dir = os.path.abspath(args.uvm)
    if _say_if_running(uvm_dir):
        return 0
    pid = _start_broker(uvm_dir, {"mode": "local", "loglevel": args.loglevel}, 60)
    print(f"local-mode UVM started (broker pid {pid}); UVM directory {uvm_dir}")
    return 0


def ensure_image(image_dir: str, quiet: bool = False) -> None:
    """Build the UVM image when it is missing or its inputs changed; on a terminal what the
    build is doing shows in place, as plain lines otherwise."""
    from gcs.host.launcher import REPO_ROOT
    from gcs.host.progress import Progress

    build = os.path.join(REPO_ROOT, "initrd", "build.py")
    if not os.path.exists(build):
        return  # an installed gcsctl without the repository: use the image as it is
    proc = subprocess.Popen([sys.executable, build, "--out", image_dir], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    assert proc.stderr is not None
    progress = Progress()
    last = ""
    for line in proc.stderr:
        m = re.match(r"^\[uvm build +([\d.]+)s\] (.*)", line.rstrip("\n"))
        last = m.group(2) if m else line.rstrip("\n")
        if not quiet:
            progress.status(f"UVM image ({m.group(1)} s): {last}" if m else f"UVM image: {last}")
    progress.end()
    if proc.wait() != 0:
        raise CliError(f"building the UVM image failed: {last.removeprefix('uvm build: ')}")


def cmd_up(args: argparse.Namespace) -> int:
    from gcs.host.qemu import IMAGE_DIR

    uvm_dir = os.path.abspath(args.uvm)
    if _say_if_running(uvm_dir):
        return 0
    image = os.path.abspath(args.image or IMAGE_DIR)
    if not args.image:
        ensure_image(image)
    t0 = time.monotonic()
    options = {"mode": "qemu", "loglevel": args.loglevel, "image": image, "memory_mb": args.memory,
               "cpus": args.cpus, "accel": args.accel, "external": args.external}
    pid = _start_broker(uvm_dir, options, args.timeout)
    state = _state(uvm_dir)
    how = "its bridge is left to an outside host" if args.external else "agent negotiated"
    print(f"UVM up in {time.monotonic() - t0:.1f} s ({state.get('accel')}, {how}); broker pid {pid}, "
          f"UVM directory {uvm_dir}")
    return 0


def _state(uvm_dir: str) -> dict:
    import json

    from gcs.host.broker import state_path
    try:
        with open(state_path(uvm_dir)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def cmd_down(args: argparse.Namespace) -> int:
    """Shut the UVM down: ShutdownGraceful (the agent powers the VM off), else QMP quit."""
    from gcs.host.broker import DeviceClient, devices_path

    uvm_dir = os.path.abspath(args.uvm)
    pid = _running_broker(uvm_dir)
    if pid is None:
        print("no UVM running")
        return 0
    try:
        if os.path.exists(ctl_path(uvm_dir)) and not args.force:
            session = Session(uvm_dir)
            try:
                session.bridge.call(RequestId.SHUTDOWN_GRACEFUL)
            finally:
                session.close()
        elif os.path.exists(devices_path(uvm_dir)):
            client = DeviceClient(uvm_dir)
            try:
                client.call("quit")
            finally:
                client.close()
        else:
            os.kill(pid, signal.SIGTERM)
    except (OSError, RpcError, BridgeClosed, SystemExit, ConnectionError):
        os.kill(pid, signal.SIGTERM)
    _wait_gone(pid, args.timeout, then_term=True)
    os.unlink(_pid_file(uvm_dir))
    print("UVM down")
    return 0


def _wait_gone(pid: int, timeout: float, then_term: bool = False) -> None:
    """Wait for the broker to exit (SIGTERM it after `timeout` when `then_term`)."""
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _alive(pid) and then_term:
        os.kill(pid, signal.SIGTERM)
        _wait_gone(pid, 15)
    if _alive(pid):
        raise CliError(f"the UVM broker (pid {pid}) did not exit")


# --- processes ----------------------------------------------------------------------------

def _env(items: Optional[list[str]], base: dict[str, str]) -> dict[str, str]:
    """-e KEY=VALUE, or -e KEY for our own value of KEY (as docker takes them)."""
    env = dict(base)
    for item in items or []:
        key, eq, value = item.partition("=")
        if not key:
            raise CliError(f"-e {item!r}: expected KEY=VALUE", 2)
        if eq:
            env[key] = value
        elif key in os.environ:
            env[key] = os.environ[key]
    return env


_HRESULT = re.compile(r"^HRESULT 0x[0-9a-fA-F]{8}: ")


def _start_failure(err: RpcError) -> CliError:
    """A process that could not be started, with docker exec's exit codes: 127 when the
    program does not exist, 126 when it cannot be run (permissions, format, working
    directory); 1 for anything else the agent refused."""
    text = _HRESULT.sub("", str(err))
    if "failed to start" in text:
        missing = "No such file or directory" in text or "not found" in text
        return CliError(text, EXIT_NOT_FOUND if missing else EXIT_NOT_EXECUTABLE)
    if text.startswith("working directory"):
        return CliError(text, EXIT_NOT_EXECUTABLE)
    return CliError(text)


def _exec(client: ProcessClient, argv: list[str], **kw: Any) -> GuestProcess:
    try:
        return client.exec(argv, **kw)
    except RpcError as err:
        raise _start_failure(err) from None


def cmd_exec(args: argparse.Namespace) -> int:
    from gcs.host.terminal import relay_pipes

    if not args.command:
        raise CliError("no command given (gcsctl exec [-i] [-t] -- CMD ...)", 2)
    env = _env(args.env, {"PATH": DEFAULT_PATH})
    session = Session(args.uvm)
    try:
        if args.tty:
            return _interactive(session, args.command, env, args.workdir, args.interactive)
        proc = _exec(session.client, args.command, env=env, cwd=args.workdir, stdin=args.interactive,
                     stdout=True, stderr=True)
        return relay_pipes(proc, args.interactive)
    finally:
        session.close()


def _interactive(session: Session, argv: list[str], env: dict[str, str], cwd: str, forward_stdin: bool) -> int:
    """A terminal session in the UVM: a pty there, window size kept in sync."""
    from gcs.host.terminal import relay_tty

    env.setdefault("TERM", os.environ.get("TERM", "xterm"))
    proc = _exec(session.client, argv, env=env, cwd=cwd, stdin=True, stdout=True, tty=True)
    return relay_tty(proc, forward_stdin)


def cmd_console(args: argparse.Namespace) -> int:
    session = Session(args.uvm)
    try:
        return _interactive(session, args.command or ["/bin/sh", "-i"],
                            {"PATH": DEFAULT_PATH, "HOME": "/root", "PS1": "uvm# "}, "/", True)
    finally:
        session.close()


# Columns both busybox (the UVM) and procps (local mode) know, shown under ps -ef's names.
PS_ARGV = ["ps", "-e", "-o", "user,pid,ppid,stat,tty,rss,args"]
PS_HEADERS = ("UID", "PID", "PPID", "STAT", "TTY", "RSS", "CMD")
PS_RIGHT = {1, 2, 5}  # numbers


def format_ps(text: str) -> str:
    """ps's rows (after its own header) as one aligned table under PS_HEADERS."""
    rows = [PS_HEADERS]
    for line in text.splitlines()[1:]:
        fields = line.split(None, len(PS_HEADERS) - 1)
        if len(fields) == len(PS_HEADERS):
            rows.append(tuple(fields))
    widths = [max(len(row[i]) for row in rows) for i in range(len(PS_HEADERS) - 1)]

    def cells(row: tuple[str, ...]) -> list[str]:
        return [(c.rjust if i in PS_RIGHT else c.ljust)(widths[i]) for i, c in enumerate(row[:-1])] + [row[-1]]
    return "".join(" ".join(cells(row)) + "\n" for row in rows)


def cmd_ps(args: argparse.Namespace) -> int:
    where = f"container {args.container}" if args.container else "UVM"
    session = Session(args.uvm)
    try:
        if args.container:
            oci = {"args": PS_ARGV, "cwd": "/", "env": [f"PATH={DEFAULT_PATH}"], "user": {"uid": 0, "gid": 0},
                   "terminal": False}
            proc = _exec(session.client, [], container_id=args.container, oci_process=oci, stdout=True, stderr=True)
        else:
            proc = _exec(session.client, PS_ARGV, env={"PATH": DEFAULT_PATH}, stdout=True, stderr=True)
        out, err, code = proc.communicate()
    finally:
        session.close()
    if code != 0:
        why = err.decode(errors="replace").strip().splitlines()
        raise CliError(f"ps in the {where} exited {code}" + (f": {why[-1]}" if why else ""), code)
    sys.stdout.write(format_ps(out.decode(errors="replace")))
    return 0


def cmd_stacks(args: argparse.Namespace) -> int:
    session = Session(args.uvm)
    try:
        reply = session.bridge.call(RequestId.DUMP_STACKS)
        sys.stdout.write(reply.get("GuestStacks", ""))
        return 0
    finally:
        session.close()


def cmd_shutdown(args: argparse.Namespace) -> int:
    session = Session(args.uvm)
    try:
        session.bridge.call(RequestId.SHUTDOWN_FORCED if args.force else RequestId.SHUTDOWN_GRACEFUL)
    finally:
        session.close()
    pid_file = _pid_file(os.path.abspath(args.uvm))
    try:
        pid = int(open(pid_file).read())
    except (OSError, ValueError):
        return 0
    _wait_gone(pid, 30)
    os.unlink(pid_file)
    print("UVM shut down")
    return 0


# --- containers ---------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    """Run a container from an OCI image in the UVM, like `docker run --rm`."""
    from gcs.host.broker import DeviceClient
    from gcs.host.oci import ImageError
    from gcs.host.progress import Progress
    from gcs.host.run import ContainerRun, RunOptions, describe_error, wait_notification
    from gcs.host.terminal import relay_pipes, relay_tty

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", args.name):
        raise CliError(f"--name {args.name!r}: letters, digits, '_', '.' and '-' only", 2)
    opts = RunOptions(args.image, command, tty=args.tty, interactive=args.interactive, env=args.env or [],
                      workdir=args.workdir or "", user=args.user or "", hostname=args.hostname or "",
                      name=args.name or "")

    def report(msg: str) -> None:
        sys.stderr.write(msg + "\n")

    session = Session(args.uvm)
    devices = DeviceClient(session.dir)
    run = ContainerRun(session.bridge, devices, session.dir, opts, report, None if args.quiet else Progress())
    started = False
    try:
        try:
            spec = run.prepare()
            run.create(spec)
            started = True
            proc = session.client.exec([], container_id=run.id, stdin=args.interactive or args.tty,
                                       stdout=True, stderr=not args.tty, init_process=True)
        except (ImageError, RpcError, RuntimeError, OSError) as err:
            report(f"gcsctl run: {describe_error(err)}")
            return 125  # docker run's "the container could not be run"
        code = relay_tty(proc, args.interactive) if args.tty else relay_pipes(proc, args.interactive)
        note = wait_notification(session.bridge, run.id)
        if args.verbose:
            report(f"gcsctl run: {note['Type'] if note else 'no exit notification'}; "
                   f"storage {run.timings.get('storage', 0):.2f} s")
        return code
    except KeyboardInterrupt:
        return 130
    finally:
        if started:
            run.stop()
        run.teardown()
        devices.close()
        session.close()


def cmd_logs(args: argparse.Namespace) -> int:
    """The agent's JSON log stream (vsock port 109 in a QEMU UVM), one readable line each."""
    path = os.path.join(os.path.abspath(args.uvm), "gcs.log")
    try:
        f = open(path, "rb")
    except OSError:
        raise CliError(f"no agent log at {path}") from None
    with f:
        while True:
            line = f.readline()
            if not line:
                if not args.follow:
                    return 0
                time.sleep(0.2)
                continue
            sys.stdout.write(line.decode(errors="replace") if args.raw else _log_line(line))
            sys.stdout.flush()


def _log_line(line: bytes) -> str:
    import json

    try:
        rec = json.loads(line)
        stamp = str(rec.pop("time", ""))[11:23]
        level, msg = rec.pop("level", "?"), rec.pop("msg", "")
        fields = " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) or ' ' in v else v}"
                          for k, v in rec.items())
        return f"{stamp} {level[:4].upper():4} {msg}" + (f"  {fields}" if fields else "") + "\n"
    except (ValueError, AttributeError):
        return line.decode(errors="replace")  # not JSON: a crash trace, say


# --- devices ------------------------------------------------------------------------------

@contextlib.contextmanager
def _broker_devices(uvm_dir: str):
    """The broker's device channel of a running UVM; its refusals become one-line errors."""
    from gcs.host.broker import DeviceClient

    client = DeviceClient(os.path.abspath(uvm_dir))
    try:
        yield client
    except RuntimeError as err:
        raise CliError(str(err)) from None
    finally:
        client.close()


def cmd_hotadd(args: argparse.Namespace) -> int:
    """Plug a disk into a running QEMU UVM (what HCS does before the host's ModifySettings)."""
    with _broker_devices(args.uvm) as client:
        if args.kind == "pmem":
            reply = client.call("pmem-add", image=args.image)
            client.call("pmem-settled")  # an outside host sends VPMemDevice Add before the next one
            print(f"vPMEM DeviceNumber {reply['device_number']} (/dev/pmem{reply['device_number']} in the UVM)")
        else:
            reply = client.call("scsi-add", image=args.image, read_only=args.read_only,
                                **({"lun": args.lun} if args.lun is not None else {}))
            print(f"SCSI Controller {reply['controller']} Lun {reply['lun']}")
    return 0


def cmd_hotremove(args: argparse.Namespace) -> int:
    controller, _, lun = args.address.partition(":")
    if not (controller.isdigit() and lun.isdigit()):
        raise CliError(f"{args.address!r}: expected CONTROLLER:LUN, e.g. 0:1", 2)
    with _broker_devices(args.uvm) as client:
        client.call("scsi-remove", controller=int(controller), lun=int(lun))
        print(f"SCSI {controller}:{lun} unplugged")
    return 0


# --- images and the demo ------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    from gcs.host import demo
    return demo.local_demo() if args.local else demo.uvm_demo(os.path.abspath(args.uvm) if args.uvm_given else None)


def cmd_image(args: argparse.Namespace) -> int:
    from gcs.host.images import make_layer_image, make_scratch_image
    from gcs.host.progress import Progress

    if args.kind == "layer":
        if not args.source:
            raise CliError("give the source directory or tar file (gcsctl image layer OUT.img SOURCE)", 2)
        if not os.path.exists(args.source):
            raise CliError(f"{args.source}: no such file or directory")
        size = make_layer_image(args.source, args.output, args.size, Progress())
        print(f"{args.output}: ext4 layer image, {size} bytes (vPMEM or read-only SCSI)")
    else:
        make_scratch_image(args.output, args.size or (1 << 30))
        print(f"{args.output}: ext4 scratch image, {os.path.getsize(args.output)} bytes")
    return 0


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower()
    try:
        return int(float(text[:-1]) * units[text[-1]]) if text[-1:] in units else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 64M, 1G)") from None


# --- the command line ---------------------------------------------------------------------

EXAMPLE_UVM = "/tmp/uvm"


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line too, pointing at the help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def _common() -> argparse.ArgumentParser:
    """Options every subcommand takes too, after its name (`gcsctl ps --uvm DIR`)."""
    common = _Parser(add_help=False)
    common.add_argument("--uvm", default=argparse.SUPPRESS, help="UVM directory (as before the command)")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show a traceback with an error")
    return common


class _Commands:
    """Adds subcommands, each with its summary, an example and the common options."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND", parser_class=_Parser)
        self.common = _common()

    def add(self, name: str, summary: str, examples: list[str], fn: Callable[[argparse.Namespace], int],
            details: str = "") -> argparse.ArgumentParser:
        p = self.sub.add_parser(name, help=summary, description=summary + (f"\n\n{details}" if details else ""),
                                epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
                                formatter_class=argparse.RawDescriptionHelpFormatter, parents=[self.common])
        p.set_defaults(fn=fn)
        return p


def _stdio_options(p: argparse.ArgumentParser, workdir_default: Optional[str]) -> None:
    p.add_argument("-i", "--interactive", action="store_true", help="forward stdin (its end reaches the process)")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pty")
    p.add_argument("-e", "--env", action="append", metavar="KEY=VALUE", help="set an environment variable")
    p.add_argument("-w", "--workdir", default=workdir_default, help="working directory")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gcsctl", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"examples:\n  gcsctl --uvm {EXAMPLE_UVM} start\n  gcsctl --uvm {EXAMPLE_UVM} exec -- ls -l /\n"
               "  gcsctl COMMAND --help    (each command's options and examples)")
    parser.add_argument("--uvm", default=DEFAULT_UVM, help=f"UVM directory (default {DEFAULT_UVM}, or $GCSCTL_UVM)")
    parser.add_argument("--debug", action="store_true", help="show a traceback with an error")
    c = _Commands(parser)
    u = f"gcsctl --uvm {EXAMPLE_UVM}"

    p = c.add("up", "boot a utility VM under QEMU (builds the image if needed)",
              [f"{u} up", f"{u} up --external --accel tcg"], cmd_up)
    p.add_argument("--loglevel", default="info", help="the agent's log level (default info)")
    p.add_argument("--memory", type=int, default=512, help="MiB of guest RAM (default 512)")
    p.add_argument("--cpus", type=int, default=1, help="virtual CPUs (default 1)")
    p.add_argument("--accel", default="auto", choices=["auto", "kvm", "tcg"],
                   help="auto: KVM where it can run the kernel, else TCG")
    p.add_argument("--image", help="directory with vmlinux and initrd.img (default: build/uvm)")
    p.add_argument("--external", action="store_true",
                   help="leave the bridge and stdio ports to an outside host listening on DIR/vsock_<port>")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the agent (default 180)")

    p = c.add("down", "shut the UVM down (ShutdownGraceful, else power off)", [f"{u} down"], cmd_down)
    p.add_argument("--force", action="store_true", help="power off without asking the agent")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")

    p = c.add("start", "start a local-mode agent for the UVM directory (no VM)", [f"{u} start"], cmd_start)
    p.add_argument("--loglevel", default="info", help="the agent's log level (default info)")

    p = c.add("run", "run a container from an OCI image layout or docker-save tarball",
              [f"{u} run busybox.tar -- sh -c 'echo hello'", f"{u} run -it --name web busybox.tar -- sh"], cmd_run,
              "Exit codes as docker run: the container's, or 125 when it could not be run.")
    _stdio_options(p, None)
    p.add_argument("-u", "--user", help="user[:group] in the container")
    p.add_argument("--hostname", help="the container's hostname (default ctr)")
    p.add_argument("--name", help="the container's id (default: random); gcsctl ps --container NAME")
    p.add_argument("-v", "--verbose", action="store_true", help="report the exit notification and timings")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress of layer conversion")
    p.add_argument("image", help="OCI image layout directory or docker-save tar")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS... (default: the image's)")

    p = c.add("logs", "the agent's log stream, pretty-printed", [f"{u} logs -f"], cmd_logs)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing what comes")
    p.add_argument("--raw", action="store_true", help="the JSON lines as they came")

    p = c.add("hotadd", "plug a disk image into the running QEMU UVM",
              [f"{u} hotadd scsi disk.img", f"{u} hotadd pmem layer.img"], cmd_hotadd)
    p.add_argument("kind", choices=["pmem", "scsi"])
    p.add_argument("image", help="the disk image file")
    p.add_argument("--read-only", action="store_true", help="SCSI: read-only disk")
    p.add_argument("--lun", type=int, help="SCSI: this LUN (default: the first free)")

    p = c.add("hotremove", "unplug a SCSI disk (after the guest's SCSIDevice Remove)", [f"{u} hotremove 0:1"],
              cmd_hotremove)
    p.add_argument("address", help="CONTROLLER:LUN, as hotadd printed it")

    p = c.add("exec", "run a command in the UVM (like docker exec)",
              [f"{u} exec -- ls -l /", f"echo hi | {u} exec -i -- cat", f"{u} exec -it -- sh"], cmd_exec,
              "stdout, stderr and the exit code as docker exec gives them: 126 when the command\n"
              "cannot be run, 127 when it does not exist, 128+N when signal N ended it. Signals\n"
              "to gcsctl go to the command. -t without -i: stdin is not read and the command's\n"
              "terminal input is at its end.")
    _stdio_options(p, "/")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")

    p = c.add("console", "interactive shell in the UVM (hcsdiag console)",
              [f"{u} console", f"{u} console -- top"], cmd_console)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS... (default: /bin/sh -i)")

    p = c.add("ps", "every process in the UVM, or in one container, like ps -ef",
              [f"{u} ps", f"{u} ps --container web"], cmd_ps)
    p.add_argument("--container", metavar="ID", help="the processes of this container (its own ps)")

    c.add("stacks", "the agent's stacks (DumpStacks)", [f"{u} stacks"], cmd_stacks)

    p = c.add("shutdown", "shut the UVM (local mode: the agent) down", [f"{u} shutdown"], cmd_shutdown)
    p.add_argument("--force", action="store_true", help="ShutdownForced instead of ShutdownGraceful")

    p = c.add("demo", "boot a UVM, run a container from an image in it, shut it down "
                      "(the local-mode agent where QEMU cannot run)", ["gcsctl demo", "gcsctl demo --local"], cmd_demo)
    p.add_argument("--local", action="store_true", help="the local-mode demo: no VM")

    p = c.add("image", "build a layer image (from a directory or tar) or a scratch disk",
              ["gcsctl image layer layer.img ./rootfs", "gcsctl image layer layer.img rootfs.tar",
               "gcsctl image scratch scratch.img --size 1G"], cmd_image)
    p.add_argument("kind", choices=["layer", "scratch"])
    p.add_argument("output", help="the image file to write")
    p.add_argument("source", nargs="?", help="layer: directory or tar file")
    p.add_argument("--size", type=_size, help="image size (e.g. 64M); layers default to what the files need")
    return parser


def command_names() -> list[str]:
    """Every subcommand, in the order of `gcsctl --help`."""
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def describe(err: BaseException) -> str:
    """One line for an error gcsctl did not word itself."""
    if isinstance(err, subprocess.CalledProcessError):
        out = err.stderr or err.output or b""
        last = (out.decode(errors="replace") if isinstance(out, bytes) else out).strip().splitlines()
        return f"{os.path.basename(str(err.cmd[0]))} failed (exit {err.returncode})" + (f": {last[-1]}" if last else "")
    if isinstance(err, OSError) and err.strerror:
        return f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    if isinstance(err, BridgeClosed):
        return f"the connection to the UVM closed ({err})"
    if isinstance(err, TimeoutError):
        return "no answer from the UVM in time"
    if isinstance(err, RpcError):
        return str(err)
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _fail(prog: str, message: str, code: int, debug: bool) -> int:
    if debug:
        import traceback
        traceback.print_exc()
    sys.stderr.write(f"{prog}: {' '.join(message.split())}\n")
    return code


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named after the subcommand they were given to
        parser.exit(2, f"gcsctl {args.cmd}: unrecognized arguments: {' '.join(extra)} (see 'gcsctl {args.cmd} --help')\n")
    args.uvm_given = any(a == "--uvm" or a.startswith("--uvm=") for a in (argv if argv is not None else sys.argv))
    if getattr(args, "command", None) and args.command[0] == "--":
        args.command = args.command[1:]
    prog = f"gcsctl {args.cmd}"
    try:
        return args.fn(args)
    except CliError as err:
        return _fail(prog, str(err), err.status, args.debug)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # whoever read our output went away, as `| head` does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Exception as err:  # noqa: BLE001 - every error is one line; --debug shows where
        return _fail(prog, describe(err), 1, args.debug)


if __name__ == "__main__":
    sys.exit(main())
