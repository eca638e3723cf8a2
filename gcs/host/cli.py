"""gcsctl: drive a guest compute service from the host side.

`up` boots a utility VM under QEMU for a directory (`start`: a local-mode agent instead)
with a small broker that holds the agent's one bridge and the VM's devices, as HCS does;
every other command connects to the broker, so any number of them (a console, a ps, an
exec, a run) can share one UVM at once. Stdio travels over hybrid vsock sockets
`DIR/vsock_<port>` straight between the agent and the command.
"""
from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Optional

from gcs.host.bridge_client import HostBridge, RpcError
from gcs.host.broker import ctl_path
from gcs.host.launcher import agent_env
from gcs.host.processes import FIRST_STDIO_PORT, ProcessClient
from gcs.protocol.ids import RequestId

DEFAULT_UVM = os.environ.get("GCSCTL_UVM", "/tmp/gcsctl-uvm")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


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
            raise SystemExit(f"gcsctl: no UVM at {self.dir} (run 'gcsctl --uvm {uvm_dir} start')") from None
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
        raise SystemExit(f"gcsctl: the UVM did not start: {why}\n(logs in {uvm_dir})")
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


def cmd_start(args: argparse.Namespace) -> int:
    uvm_dir = os.path.abspath(args.uvm)
    pid = _running_broker(uvm_dir)
    if pid:
        print(f"UVM already running (broker pid {pid})")
        return 0
    pid = _start_broker(uvm_dir, {"mode": "local", "loglevel": args.loglevel}, 60)
    print(f"local-mode UVM started (broker pid {pid}); UVM directory {uvm_dir}")
    return 0


def ensure_image(image_dir: str, quiet: bool = False) -> None:
    """Build the UVM image when it is missing or its inputs changed (progress on stderr)."""
    from gcs.host.launcher import REPO_ROOT

    build = os.path.join(REPO_ROOT, "initrd", "build.py")
    if not os.path.exists(build):
        return  # an installed gcsctl without the repository: use the image as it is
    res = subprocess.run([sys.executable, build, "--out", image_dir],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if quiet else None)
    if res.returncode != 0:
        raise SystemExit("gcsctl: building the UVM image failed (see above)")


def cmd_up(args: argparse.Namespace) -> int:
    from gcs.host.qemu import IMAGE_DIR

    uvm_dir = os.path.abspath(args.uvm)
    pid = _running_broker(uvm_dir)
    if pid:
        print(f"UVM already running (broker pid {pid})")
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
    from gcs.host.broker import DeviceClient, ctl_path, devices_path

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
    except (OSError, RpcError, SystemExit, ConnectionError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    if _alive(pid):
        raise SystemExit(f"gcsctl: the UVM broker (pid {pid}) did not exit")
    os.unlink(_pid_file(uvm_dir))
    print("UVM down")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    if not args.command:
        raise SystemExit("gcsctl exec: no command (gcsctl exec -- CMD ...)")
    env = {"PATH": DEFAULT_PATH}
    for item in args.env or []:
        key, _, value = item.partition("=")
        env[key] = value
    session = Session(args.uvm)
    try:
        if args.tty:
            return _interactive(session, args.command, env, args.workdir)
        proc = session.client.exec(args.command, env=env, cwd=args.workdir, stdin=args.interactive,
                                   stdout=True, stderr=True)
        return _relay_pipes(proc, args.interactive)
    finally:
        session.close()


def _exit_code(code: int) -> int:
    return code & 0xFF if code != 0xFFFFFFFF else 255


def _relay_pipes(proc, interactive: bool) -> int:
    """stdout/stderr to ours (and our stdin to it with -i) until the process has exited."""
    threads = [threading.Thread(target=_copy_to, args=(proc.stdout, sys.stdout.buffer), daemon=True),
               threading.Thread(target=_copy_to, args=(proc.stderr, sys.stderr.buffer), daemon=True)]
    for t in threads:
        t.start()
    if interactive:
        threading.Thread(target=_feed_stdin, args=(proc,), daemon=True).start()
    code = proc.wait()
    for t in threads:
        t.join(5)
    proc.close()
    return _exit_code(code)


def _copy_to(sock: Optional[socket.socket], out) -> None:
    if sock is None:
        return
    while True:
        try:
            data = sock.recv(1 << 16)
        except OSError:
            return
        if not data:
            return
        out.write(data)
        out.flush()


def _feed_stdin(proc) -> None:
    fd = sys.stdin.fileno()
    while True:
        data = os.read(fd, 1 << 16)
        if not data:
            break
        try:
            proc.stdin.sendall(data)
        except OSError:
            return
    proc.close_stdin()


def _interactive(session: Session, argv: list[str], env: dict[str, str], cwd: str) -> int:
    """A terminal session in the UVM: a pty there, window size kept in sync."""
    env.setdefault("TERM", os.environ.get("TERM", "xterm"))
    return _relay_tty(session.client.exec(argv, env=env, cwd=cwd, stdin=True, stdout=True, tty=True))


def _relay_tty(proc) -> int:
    """Raw local tty <-> the process's pty until it exits; returns its exit code."""
    import termios
    import tty

    from gcs.stdio.pty import get_window_size

    in_fd, out_fd = sys.stdin.fileno(), sys.stdout.fileno()
    is_tty = os.isatty(in_fd)

    def sync_size(*_: object) -> None:
        if is_tty:
            try:
                rows, cols = get_window_size(in_fd)
                if rows and cols:
                    proc.resize(rows, cols)
            except (OSError, RpcError):
                pass

    saved = termios.tcgetattr(in_fd) if is_tty else None
    exit_code: list[int] = []
    done_r, done_w = os.pipe()

    def waiter() -> None:
        try:
            exit_code.append(proc.wait())
        finally:
            os.write(done_w, b"x")

    try:
        if is_tty:
            tty.setraw(in_fd)
            signal.signal(signal.SIGWINCH, sync_size)
        sync_size()
        threading.Thread(target=waiter, daemon=True).start()
        sock = proc.stdout
        stdin_open = proc.stdin is not None
        while True:
            fds = [sock.fileno(), done_r] + ([in_fd] if stdin_open else [])
            ready, _, _ = select.select(fds, [], [])
            if sock.fileno() in ready:
                data = sock.recv(1 << 16)
                if not data:
                    break
                os.write(out_fd, data)
            if in_fd in ready:
                data = os.read(in_fd, 1 << 16)
                if data:
                    proc.stdin.sendall(data)
                else:
                    stdin_open = False
                    proc.close_stdin()
            if done_r in ready and sock.fileno() not in ready:
                break
    finally:
        if saved is not None:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
            signal.signal(signal.SIGWINCH, signal.SIG_DFL)
        os.close(done_r)
    deadline = time.monotonic() + 5
    while not exit_code and time.monotonic() < deadline:
        time.sleep(0.01)
    os.close(done_w)
    proc.close()
    return _exit_code(exit_code[0] if exit_code else 255)


def cmd_run(args: argparse.Namespace) -> int:
    """Run a container from an OCI image in the UVM, like `docker run --rm`."""
    from gcs.host.broker import DeviceClient
    from gcs.host.oci import ImageError
    from gcs.host.run import ContainerRun, RunOptions, wait_notification

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    opts = RunOptions(args.image, command, tty=args.tty, interactive=args.interactive, env=args.env or [],
                      workdir=args.workdir or "", user=args.user or "", hostname=args.hostname or "")

    def report(msg: str) -> None:
        sys.stderr.write(msg + "\n")

    session = Session(args.uvm)
    devices = DeviceClient(session.dir)
    run = ContainerRun(session.bridge, devices, session.dir, opts, report)
    started = False
    try:
        try:
            spec = run.prepare()
            run.create(spec)
            started = True
            proc = session.client.exec([], container_id=run.id, stdin=args.interactive or args.tty,
                                       stdout=True, stderr=not args.tty, init_process=True)
        except (ImageError, RpcError, RuntimeError, OSError) as err:
            from gcs.host.run import describe_error
            report(f"gcsctl run: {describe_error(err)}")
            return 125  # docker run's "the container could not be run"
        code = _relay_tty(proc) if args.tty else _relay_pipes(proc, args.interactive)
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
    import json

    path = os.path.join(os.path.abspath(args.uvm), "gcs.log")
    try:
        f = open(path, "rb")
    except OSError:
        raise SystemExit(f"gcsctl: no agent log at {path}") from None
    with f:
        while True:
            line = f.readline()
            if not line:
                if not args.follow:
                    return 0
                time.sleep(0.2)
                continue
            if args.raw:
                sys.stdout.write(line.decode(errors="replace"))
                continue
            try:
                rec = json.loads(line)
                stamp = str(rec.pop("time", ""))[11:23]
                level, msg = rec.pop("level", "?"), rec.pop("msg", "")
                fields = " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) or ' ' in v else v}"
                                  for k, v in rec.items())
                sys.stdout.write(f"{stamp} {level[:4].upper():4} {msg}" + (f"  {fields}" if fields else "") + "\n")
            except (ValueError, AttributeError):
                sys.stdout.write(line.decode(errors="replace"))  # not JSON: a crash trace, say
            sys.stdout.flush()


def cmd_hotadd(args: argparse.Namespace) -> int:
    """Plug a disk into a running QEMU UVM (what HCS does before the host's ModifySettings)."""
    from gcs.host.broker import DeviceClient

    client = DeviceClient(os.path.abspath(args.uvm))
    try:
        if args.kind == "pmem":
            reply = client.call("pmem-add", image=args.image)
            client.call("pmem-settled")  # an outside host sends VPMemDevice Add before the next one
            print(f"vPMEM DeviceNumber {reply['device_number']} (/dev/pmem{reply['device_number']} in the UVM)")
        else:
            reply = client.call("scsi-add", image=args.image, read_only=args.read_only,
                                **({"lun": args.lun} if args.lun is not None else {}))
            print(f"SCSI Controller {reply['controller']} Lun {reply['lun']}")
        return 0
    except RuntimeError as err:
        raise SystemExit(f"gcsctl hotadd: {err}") from None
    finally:
        client.close()


def cmd_hotremove(args: argparse.Namespace) -> int:
    from gcs.host.broker import DeviceClient

    controller, _, lun = args.address.partition(":")
    client = DeviceClient(os.path.abspath(args.uvm))
    try:
        client.call("scsi-remove", controller=int(controller), lun=int(lun))
        print(f"SCSI {controller}:{lun} unplugged")
        return 0
    except (RuntimeError, ValueError) as err:
        raise SystemExit(f"gcsctl hotremove: {err}") from None
    finally:
        client.close()


def cmd_console(args: argparse.Namespace) -> int:
    session = Session(args.uvm)
    try:
        return _interactive(session, args.command or ["/bin/sh", "-i"],
                            {"PATH": DEFAULT_PATH, "HOME": "/root", "PS1": "uvm# "}, "/")
    finally:
        session.close()


def cmd_ps(args: argparse.Namespace) -> int:
    session = Session(args.uvm)
    try:
        # columns both busybox (the UVM) and procps (local mode) know; -e: every process
        out, err, code = session.client.run(["ps", "-e", "-o", "pid,ppid,user,stat,rss,args"],
                                            env={"PATH": DEFAULT_PATH})
        sys.stdout.buffer.write(out)
        sys.stderr.buffer.write(err)
        return code
    finally:
        session.close()


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
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _alive(pid):
        raise SystemExit(f"gcsctl: the UVM broker (pid {pid}) did not exit")
    os.unlink(pid_file)
    print("UVM shut down")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gcs.host import demo
    return demo.local_demo() if args.local else demo.uvm_demo(os.path.abspath(args.uvm) if args.uvm_given else None)


def cmd_image(args: argparse.Namespace) -> int:
    from gcs.host.images import make_layer_image, make_scratch_image
    if args.kind == "layer":
        if not args.source:
            raise SystemExit("gcsctl image layer: give the source directory or tar file")
        size = make_layer_image(args.source, args.output, args.size)
        print(f"{args.output}: ext4 layer image, {size} bytes (vPMEM or read-only SCSI)")
    else:
        make_scratch_image(args.output, args.size or (1 << 30))
        print(f"{args.output}: ext4 scratch image, {os.path.getsize(args.output)} bytes")
    return 0


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1:] in units else int(text)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="gcsctl", description=__doc__.split("\n\n")[0])
    parser.add_argument("--uvm", default=DEFAULT_UVM, help=f"UVM directory (default {DEFAULT_UVM})")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("up", help="boot a utility VM under QEMU (builds the image if needed)")
    p.add_argument("--loglevel", default="info")
    p.add_argument("--memory", type=int, default=512, help="MiB of guest RAM (default 512)")
    p.add_argument("--cpus", type=int, default=1)
    p.add_argument("--accel", default="auto", choices=["auto", "kvm", "tcg"],
                   help="auto: KVM where it can run the kernel, else TCG")
    p.add_argument("--image", help="directory with vmlinux and initrd.img (default: build/uvm)")
    p.add_argument("--external", action="store_true",
                   help="leave the bridge and stdio ports to an outside host listening on DIR/vsock_<port>")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the agent")
    p.set_defaults(fn=cmd_up)
    p = sub.add_parser("down", help="shut the UVM down (ShutdownGraceful, else power off)")
    p.add_argument("--force", action="store_true", help="power off without asking the agent")
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(fn=cmd_down)
    p = sub.add_parser("start", help="start a local-mode agent for the UVM directory (no VM)")
    p.add_argument("--loglevel", default="info")
    p.set_defaults(fn=cmd_start)
    p = sub.add_parser("run", help="run a container from an OCI image layout or docker-save tarball")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pty")
    p.add_argument("-i", "--interactive", action="store_true", help="forward stdin")
    p.add_argument("-e", "--env", action="append", help="KEY=VALUE")
    p.add_argument("-w", "--workdir")
    p.add_argument("-u", "--user")
    p.add_argument("--hostname")
    p.add_argument("-v", "--verbose", action="store_true", help="report the exit notification and timings")
    p.add_argument("image")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("logs", help="the agent's log stream, pretty-printed")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--raw", action="store_true", help="the JSON lines as they came")
    p.set_defaults(fn=cmd_logs)
    p = sub.add_parser("hotadd", help="plug a disk image into the running QEMU UVM")
    p.add_argument("kind", choices=["pmem", "scsi"])
    p.add_argument("image")
    p.add_argument("--read-only", action="store_true")
    p.add_argument("--lun", type=int)
    p.set_defaults(fn=cmd_hotadd)
    p = sub.add_parser("hotremove", help="unplug a SCSI disk (after the guest's SCSIDevice Remove)")
    p.add_argument("address", help="CONTROLLER:LUN")
    p.set_defaults(fn=cmd_hotremove)
    p = sub.add_parser("exec", help="run a command in the UVM (like docker exec)")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pty")
    p.add_argument("-i", "--interactive", action="store_true", help="forward stdin")
    p.add_argument("-e", "--env", action="append", help="KEY=VALUE")
    p.add_argument("-w", "--workdir", default="/")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_exec)
    p = sub.add_parser("console", help="interactive shell in the UVM (hcsdiag console)")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_console)
    sub.add_parser("ps", help="processes in the UVM").set_defaults(fn=cmd_ps)
    sub.add_parser("stacks", help="the agent's stacks (DumpStacks)").set_defaults(fn=cmd_stacks)
    p = sub.add_parser("shutdown", help="shut the UVM (local mode: the agent) down")
    p.add_argument("--force", action="store_true")
    p.set_defaults(fn=cmd_shutdown)
    p = sub.add_parser("demo", help="boot a UVM, run a container from an image in it, shut it down "
                                     "(the local-mode agent where QEMU cannot run)")
    p.add_argument("--local", action="store_true", help="the local-mode demo: no VM")
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("image", help="build a layer image (from a directory or tar) or a scratch disk")
    p.add_argument("kind", choices=["layer", "scratch"])
    p.add_argument("output")
    p.add_argument("source", nargs="?", help="layer: directory or tar file")
    p.add_argument("--size", type=_size, help="image size (e.g. 64M); layers default to what the files need")
    p.set_defaults(fn=cmd_image)
    args = parser.parse_args(argv)
    args.uvm_given = any(a == "--uvm" or a.startswith("--uvm=") for a in (argv if argv is not None else sys.argv))
    if getattr(args, "command", None) and args.command[0] == "--":
        args.command = args.command[1:]
    try:
        return args.fn(args)
    except RpcError as err:
        sys.stderr.write(f"gcsctl: {err}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
