#!/usr/bin/env bash
# Installs what the agent, its tests and benchmarks need on Debian (idempotent, quick when done).
set -euo pipefail
PY="${1:-python3}"
need_apt=()
for cmd_pkg in "ps:procps" "mkfs.ext4:e2fsprogs" "sfdisk:fdisk" "losetup:mount" "dmsetup:dmsetup" "busybox:busybox-static" "runc:runc" "qemu-system-x86_64:qemu-system-x86" "cpio:cpio" "ldd:libc-bin" "gcc:gcc" "dpkg-deb:dpkg" "diod:diod" "mkfs.xfs:xfsprogs" "mkfs.btrfs:btrfs-progs" "mkfs.vfat:dosfstools"; do
    command -v "${cmd_pkg%%:*}" >/dev/null 2>&1 || need_apt+=("${cmd_pkg#*:}")
done
[ -e /usr/include/sys/capability.h ] || need_apt+=(libcap-dev)
[ -e /usr/include/linux/vm_sockets.h ] && [ -e /usr/include/stdio.h ] || need_apt+=(libc6-dev linux-libc-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "deps: apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if ! "$PY" -c 'import prctl, msgpack, pyroute2, pytest, qemu.qmp' 2>/dev/null; then
    echo "deps: pip install msgpack pyroute2 python-prctl pytest qemu.qmp"
    "$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore \
        msgpack pyroute2 python-prctl pytest qemu.qmp
fi
