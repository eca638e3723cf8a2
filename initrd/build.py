"""Build a small UVM image for QEMU from Debian's own packages: the kernel as an uncompressed
vmlinux (boots in ~2 s under TCG with qboot), an initrd with busybox, the virtio modules,
Debian's Python 3.11 (pruned) and this repository's agent and guest test programs.

    python3 initrd/build.py [--out build/uvm]      # writes vmlinux and initrd.cpio

The kernel's /init (a busybox script) mounts the basics, loads the modules and runs the
command given on the kernel command line after `--` (or a shell).
Everything comes from the Debian archive (apt-get download) and the host's busybox-static;
the result is cached in the output directory.
"""
from __future__ import annotations

import argparse
import glob
import lzma
import os
import shutil
import subprocess
import sys

KERNEL = "6.1.0-56-amd64"
PY_PACKAGES = ["python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib"]
MODULES = [  # load order (busybox insmod: no dependency resolution)
    "drivers/virtio/virtio_ring.ko", "drivers/virtio/virtio.ko", "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko", "drivers/virtio/virtio_pci.ko",
    "net/vmw_vsock/vsock.ko", "net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
    "net/vmw_vsock/vmw_vsock_virtio_transport.ko",
]
PRUNE = ["test", "idlelib", "tkinter", "ensurepip", "lib2to3", "pydoc_data", "distutils", "sqlite3", "turtledemo",
         "unittest", "config-3.11-x86_64-linux-gnu", "venv", "__phello__"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /run /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox mount -t tmpfs -o mode=0755 tmpfs /run
/bin/busybox mount -t tmpfs tmpfs /tmp
for m in $(cat /etc/modules.order); do /bin/busybox insmod /lib/modules/$m || echo "insmod $m failed"; done
export PATH=/sbin:/usr/sbin:/bin:/usr/bin PYTHONPATH=/opt/pygcs PYTHONDONTWRITEBYTECODE=1
cmd=$(/bin/busybox sed -n 's/.* -- //p' /proc/cmdline)
echo "uvm-init: ready"
if [ -n "$cmd" ]; then sh -c "$cmd"; echo "uvm-init: exit $?"; else sh; fi
/bin/busybox poweroff -f
"""


def run(*cmd: str, cwd: str | None = None) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=cwd).stdout


def download(cache: str, packages: list[str]) -> list[str]:
    os.makedirs(cache, exist_ok=True)
    debs = []
    for pkg in packages:
        found = glob.glob(os.path.join(cache, f"{pkg}_*.deb"))
        if not found:
            run("apt-get", "download", "-qq", pkg, cwd=cache)
            found = glob.glob(os.path.join(cache, f"{pkg}_*.deb"))
        debs.append(found[0])
    return debs


def extract_vmlinux(bzimage: str, out: str) -> None:
    """The bzImage's payload is XZ: decompressing it once here saves ~3 s per boot under TCG."""
    data = open(bzimage, "rb").read()
    start = data.find(b"\xfd7zXZ\x00")
    if start < 0:
        raise SystemExit("no XZ payload in the kernel image")
    decomp = lzma.LZMADecompressor(lzma.FORMAT_XZ)
    vmlinux = decomp.decompress(data[start:])
    with open(out, "wb") as f:
        f.write(vmlinux)


def build(out: str) -> None:
    cache = os.path.join(out, "debs")
    root = os.path.join(out, "root")
    vmlinux = os.path.join(out, "vmlinux")
    kdeb, *pydebs = download(cache, [f"linux-image-{KERNEL}", *PY_PACKAGES])
    kdir = os.path.join(out, "kernel")
    if not os.path.exists(vmlinux):
        shutil.rmtree(kdir, ignore_errors=True)
        run("dpkg-deb", "-x", kdeb, kdir)
        extract_vmlinux(os.path.join(kdir, "boot", f"vmlinuz-{KERNEL}"), vmlinux)
    shutil.rmtree(root, ignore_errors=True)
    for d in ("bin", "sbin", "etc", "lib/modules", "proc", "sys", "dev", "run", "tmp", "opt/pygcs"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy2("/bin/busybox", os.path.join(root, "bin", "busybox"))
    for applet in run("/bin/busybox", "--list").split():
        if applet != "busybox" and not os.path.exists(os.path.join(root, "bin", applet)):
            os.symlink("busybox", os.path.join(root, "bin", applet))
    with open(os.path.join(root, "etc", "modules.order"), "w") as f:
        for module in MODULES:
            src = os.path.join(kdir, "lib", "modules", KERNEL, "kernel", module)
            if not os.path.exists(src):
                kdir_ok = os.path.exists(os.path.join(kdir, "lib"))
                if not kdir_ok:
                    run("dpkg-deb", "-x", kdeb, kdir)
            shutil.copy2(src, os.path.join(root, "lib", "modules", os.path.basename(module)))
            f.write(os.path.basename(module) + "\n")
    pyroot = os.path.join(out, "python")
    shutil.rmtree(pyroot, ignore_errors=True)
    for deb in pydebs:
        run("dpkg-deb", "-x", deb, pyroot)
    shutil.copytree(os.path.join(pyroot, "usr"), os.path.join(root, "usr"), symlinks=True, dirs_exist_ok=True)
    stdlib = os.path.join(root, "usr", "lib", "python3.11")
    for name in PRUNE:
        shutil.rmtree(os.path.join(stdlib, name), ignore_errors=True)
    python = os.path.join(root, "usr", "bin", "python3.11")
    os.symlink("python3.11", os.path.join(root, "usr", "bin", "python3"))
    for lib in _needed_libs(python, os.path.join(stdlib, "lib-dynload")):
        dest = os.path.join(root, lib.lstrip("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if not os.path.exists(dest):
            shutil.copy2(os.path.realpath(lib), dest)
    os.makedirs(os.path.join(root, "lib64"), exist_ok=True)
    loader = "/lib64/ld-linux-x86-64.so.2"
    shutil.copy2(os.path.realpath(loader), os.path.join(root, loader.lstrip("/")))
    for package in ("gcs", "vmbus"):
        shutil.copytree(os.path.join(REPO, package), os.path.join(root, "opt", "pygcs", package),
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(os.path.join(REPO, "initrd", "guest_vsock.py"), os.path.join(root, "opt", "pygcs"))
    with open(os.path.join(root, "init"), "w") as f:
        f.write(INIT)
    os.chmod(os.path.join(root, "init"), 0o755)
    files = run("find", ".", cwd=root)
    subprocess.run(["cpio", "-o", "-H", "newc", "--quiet", "-F", os.path.join(out, "initrd.cpio")],
                   input=files, text=True, cwd=root, check=True)


def _needed_libs(python: str, dynload: str) -> set[str]:
    libs: set[str] = set()
    targets = [python] + glob.glob(os.path.join(dynload, "*.so"))
    for target in targets:
        try:
            out = run("ldd", target)
        except subprocess.CalledProcessError:
            continue
        for line in out.splitlines():
            parts = line.split("=>")
            if len(parts) == 2 and parts[1].strip().startswith("/"):
                libs.add(parts[1].split()[0])
    return libs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(REPO, "build", "uvm"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    build(os.path.abspath(args.out))
    print(os.path.join(os.path.abspath(args.out), "initrd.cpio"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
