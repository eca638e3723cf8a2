"""gcsctl: drive a guest compute service from the host side.

`start` launches a UVM for a directory (for now a local-mode agent) and a small broker
that holds the agent's one bridge, as HCS does; every other command connects to the
broker, so any number of them (a console, a ps, an exec) can run at once. Stdio travels
over hybrid vsock sockets `DIR/vsock_<port>` straight between the agent and the command.
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
from gcs.host.launcher import LocalUvm, agent_env
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


def cmd_start(args: argparse.Namespace) -> int:
    uvm_dir = os.path.abspath(args.uvm)
    os.makedirs(uvm_dir, exist_ok=True)
    pid_file = _pid_file(uvm_dir)
    try:
        pid = int(open(pid_file).read())
        if _alive(pid):
            print(f"UVM already running (broker pid {pid})")
            return 0
    except (OSError, ValueError):
        pass
    with open(os.path.join(uvm_dir, "broker.log"), "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gcs.host.broker", uvm_dir, args.loglevel],
                                env=agent_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=log, start_new_session=True)
    assert proc.stdout is not None
    ready = proc.stdout.readline()
    proc.stdout.close()
    if ready.strip() != b"ready":
        proc.wait(10)
        raise SystemExit(f"gcsctl: the UVM did not start; see {uvm_dir}/broker.log and {uvm_dir}/gcs.log")
    with open(pid_file, "w") as f:
        f.write(str(proc.pid))
    print(f"local-mode UVM started (broker pid {proc.pid}); UVM directory {uvm_dir}")
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
        threads = [threading.Thread(target=_copy_to, args=(proc.stdout, sys.stdout.buffer), daemon=True),
                   threading.Thread(target=_copy_to, args=(proc.stderr, sys.stderr.buffer), daemon=True)]
        for t in threads:
            t.start()
        if args.interactive:
            threading.Thread(target=_feed_stdin, args=(proc,), daemon=True).start()
        code = proc.wait()
        for t in threads:
            t.join(5)
        proc.close()
        return code & 0xFF if code != 0xFFFFFFFF else 255
    finally:
        session.close()


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
    """A terminal session: raw local tty, pty in the guest, window size kept in sync."""
    import termios
    import tty

    from gcs.stdio.pty import get_window_size

    env.setdefault("TERM", os.environ.get("TERM", "xterm"))
    proc = session.client.exec(argv, env=env, cwd=cwd, stdin=True, stdout=True, tty=True)
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
        stdin_open = True
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
    code = exit_code[0] if exit_code else 255
    return code & 0xFF if code != 0xFFFFFFFF else 255


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
        out, err, code = session.client.run(["ps", "-o", "pid,ppid,stat,etime,args"],
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
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _alive(pid):
        raise SystemExit(f"gcsctl: the UVM broker (pid {pid}) did not exit")
    os.unlink(pid_file)
    print("UVM shut down")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Start a local-mode agent; run processes and a container in it; shut it down."""
    import json
    import tempfile

    from gcs.host.images import attach_loop, detach_loop, make_layer_image
    from gcs.host.samples import busybox_rootfs, default_spec

    with tempfile.TemporaryDirectory(prefix="gcs-demo-") as tmp:
        # A read-only layer image on a loop device stands in for the host's vPMEM device.
        busybox_rootfs(os.path.join(tmp, "rootfs"))
        make_layer_image(os.path.join(tmp, "rootfs"), os.path.join(tmp, "layer.img"))
        loop = attach_loop(os.path.join(tmp, "layer.img"))
        os.makedirs(os.path.join(tmp, "devroot", "dev"))
        os.symlink(loop, os.path.join(tmp, "devroot", "dev", "pmem0"))
        t0 = time.monotonic()
        uvm = LocalUvm(os.path.join(tmp, "uvm"), loglevel="info",
                       extra_args=["--dev-root", os.path.join(tmp, "devroot")]).start()
        try:
            print(f"== local-mode agent negotiated protocol v4 in {(time.monotonic() - t0) * 1000:.0f} ms")
            assert uvm.client is not None and uvm.bridge is not None
            out, err, code = uvm.client.run(["sh", "-c", "echo hello from the UVM: $(uname -sr); id -u"])
            print(f"== exec in the UVM -> exit {code}\n{out.decode()}{err.decode()}", end="")
            sleeper = uvm.client.exec(["sleep", "30"])
            out, _, _ = uvm.client.run(["ps", "-o", "pid,ppid,stat,args"])
            print(f"== ps (sleep 30 is pid {sleeper.pid})\n{out.decode()}", end="")
            sleeper.signal(signal.SIGTERM)
            print(f"== SIGTERM to pid {sleeper.pid} -> exit code {sleeper.wait()}")

            def modify(resource: str, settings: dict, request: str = "Add") -> None:
                uvm.bridge.call(RequestId.MODIFY_SETTINGS, Request={
                    "RequestType": request, "ResourceType": resource, "Settings": settings})

            modify("VPMemDevice", {"DeviceNumber": 0, "MountPath": "/run/layers/p0"})
            rootfs = "/run/gcs/c/demo/rootfs"
            modify("CombinedLayers", {"ContainerID": "demo", "ContainerRootPath": rootfs,
                                      "Layers": [{"Path": "/run/layers/p0"}],
                                      "ScratchPath": "/run/gcs/c/demo/scratch/demo"})
            spec = default_spec(["sh", "-c", "echo hello from container $(hostname), pid $$; "
                                             "grep CapEff /proc/self/status; ls /proc | grep -c '^[0-9]'"], rootfs)
            config = {"SchemaVersion": {"Major": 2, "Minor": 1}, "OciBundlePath": "/run/gcs/c/demo",
                      "OciSpecification": spec, "ScratchDirPath": "/run/gcs/c/demo/scratch/demo"}
            uvm.bridge.known_containers.add("demo")
            t1 = time.monotonic()
            uvm.bridge.call(RequestId.CREATE, "demo", ContainerConfig=json.dumps(config))
            uvm.bridge.call(RequestId.START, "demo")
            init = uvm.client.exec([], container_id="demo", stdout=True, stderr=True, init_process=True)
            out, err, code = init.communicate()
            note = uvm.bridge.notifications.get(timeout=10)
            print(f"== container from a pmem layer + overlay, native runtime: exit {code} in "
                  f"{(time.monotonic() - t1) * 1000:.0f} ms, notification {note['Type']}\n{out.decode()}{err.decode()}",
                  end="")
            modify("CombinedLayers", {"ContainerRootPath": rootfs}, "Remove")
            uvm.bridge.call(RequestId.DELETE_CONTAINER_STATE, "demo")
            modify("VPMemDevice", {"DeviceNumber": 0, "MountPath": "/run/layers/p0"}, "Remove")
            uvm.bridge.call(RequestId.SHUTDOWN_GRACEFUL)
            assert uvm.proc is not None
            print(f"== shutdown -> agent exited with {uvm.proc.wait(10)}")
        finally:
            uvm.stop()
            detach_loop(loop)
    return 0


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
    p = sub.add_parser("start", help="start a local-mode agent for the UVM directory")
    p.add_argument("--loglevel", default="info")
    p.set_defaults(fn=cmd_start)
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
    sub.add_parser("demo", help="start an agent, exec, ps, signal, shut down").set_defaults(fn=cmd_demo)
    p = sub.add_parser("image", help="build a layer image (from a directory or tar) or a scratch disk")
    p.add_argument("kind", choices=["layer", "scratch"])
    p.add_argument("output")
    p.add_argument("source", nargs="?", help="layer: directory or tar file")
    p.add_argument("--size", type=_size, help="image size (e.g. 64M); layers default to what the files need")
    p.set_defaults(fn=cmd_image)
    args = parser.parse_args(argv)
    if getattr(args, "command", None) and args.command[0] == "--":
        args.command = args.command[1:]
    try:
        return args.fn(args)
    except RpcError as err:
        sys.stderr.write(f"gcsctl: {err}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
