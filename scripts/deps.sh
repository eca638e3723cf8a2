#!/usr/bin/env bash
# Set-up, part of every make target (idempotent, quick when done): the Debian packages the
# agent, its tests and benchmarks need, and the project's own virtual environment with the
# dependencies pinned in requirements.txt and this project installed into it (`pip install
# -e .`: `gcsctl` is a console script in VENV/bin).
#
#   scripts/deps.sh [PYTHON] [VENV]
#
# PYTHON: any Python 3.11+ (default: Debian's /usr/bin/python3 where it exists, else the
# first python3 on PATH); a pyenv shim is resolved to the interpreter behind it, so the venv
# never runs through the shim. VENV: default .venv. Debian's own Python refuses pip outside
# a venv (PEP 668), which is one reason for the venv; python-prctl has no wheel and is
# compiled, hence gcc, libcap-dev and the interpreter's headers.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE="${1:-}"
VENV="${2:-.venv}"
STAMP="$VENV/.pygcs-deps"

say() { echo "deps: $*"; }
die() { echo "deps: $*" >&2; exit 1; }

default_python() {
    if [ -x /usr/bin/python3 ]; then echo /usr/bin/python3; else command -v python3 || true; fi
}

# The interpreter itself, not a shim or wrapper in front of it.
real_python() {
    "$1" -c 'import os, sys; print(os.path.realpath(sys.executable))' 2>/dev/null
}

apt_install() {
    local sudo=()
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to apt-get install $*"
        sudo=(sudo)
    fi
    say "apt-get install $*"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Tools the agent, tests and the UVM image builder run, by the command that shows each is there.
system_packages() {
    local need=() cmd_pkg
    for cmd_pkg in "ps:procps" "mkfs.ext4:e2fsprogs" "sfdisk:fdisk" "losetup:mount" "dmsetup:dmsetup" \
        "busybox:busybox-static" "runc:runc" "qemu-system-x86_64:qemu-system-x86" "cpio:cpio" "ldd:libc-bin" \
        "gcc:gcc" "dpkg-deb:dpkg" "diod:diod" "mkfs.xfs:xfsprogs" "mkfs.btrfs:btrfs-progs" \
        "mkfs.vfat:dosfstools" "sha256sum:coreutils"; do
        command -v "${cmd_pkg%%:*}" >/dev/null 2>&1 || need+=("${cmd_pkg#*:}")
    done
    [ -e /usr/include/sys/capability.h ] || need+=(libcap-dev)
    { [ -e /usr/include/linux/vm_sockets.h ] && [ -e /usr/include/stdio.h ]; } || need+=(libc6-dev linux-libc-dev)
    echo "${need[@]}"
}

# Debian's interpreters lack venv (ensurepip) and headers until python3.X-venv/-dev are in.
python_packages() {
    local py="$1" ver need=()
    case "$py" in /usr/bin/*) ;; *) return 0 ;; esac
    ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    "$py" -c 'import ensurepip, venv' 2>/dev/null || need+=("python$ver-venv")
    "$py" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        || need+=("python$ver-dev")
    echo "${need[@]}"
}

deps_hash() {
    cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1
}

make_venv() {
    local py="$1"
    say "virtual environment $VENV from $py"
    if [ -e "$VENV" ]; then
        [ -e "$VENV/pyvenv.cfg" ] || die "$VENV exists and is not a virtual environment: not touching it"
        rm -rf "$VENV"
    fi
    "$py" -m venv "$VENV"
}

install_python_deps() {
    say "pip install -r requirements.txt; pip install -e . (into $VENV)"
    local pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-warn-script-location)
    # The constraint also pins what pip puts in the isolated env that builds python-prctl.
    PIP_CONSTRAINT="$PWD/requirements.txt" PIP_ROOT_USER_ACTION=ignore "${pip[@]}" -r requirements.txt
    # compat: a .pth naming the repository, not an import hook (~15 ms less per gcsctl start)
    PIP_ROOT_USER_ACTION=ignore "${pip[@]}" --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
}

main() {
    [ -n "$BASE" ] || BASE=$(default_python)
    if [ -z "$BASE" ]; then  # a minimal Debian: its own python3
        apt_install python3
        BASE=/usr/bin/python3
    fi
    local py
    py=$(real_python "$BASE") || die "$BASE does not run"
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$py is Python $("$py" -c 'import platform; print(platform.python_version())'); pygcs needs 3.11+ (PYTHON=...)"
    local need
    need="$(system_packages) $(python_packages "$py")"
    # shellcheck disable=SC2086 # a list of package names
    [ -z "${need// /}" ] || apt_install $need
    local want
    want="base=$py $(deps_hash)"
    if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
        return 0
    fi
    if ! [ -x "$VENV/bin/python" ] || ! grep -qs "^base=$py " "$STAMP"; then
        make_venv "$py"
    fi
    install_python_deps
    "$VENV/bin/python" -c 'import prctl, msgpack, pyroute2, pytest, qemu.qmp' || die "the venv lacks a dependency"
    # atheris where requirements.txt's marker installs it (the fuzz test is skipped elsewhere)
    "$VENV/bin/python" -c 'import platform, sys
if sys.version_info < (3, 14) and platform.machine() == "x86_64": import atheris' || die "the venv lacks atheris"
    [ -x "$VENV/bin/gcsctl" ] || die "gcsctl was not installed into $VENV/bin"
    echo "$want" > "$STAMP"
    say "ready: $VENV/bin/python ($("$VENV/bin/python" -c 'import platform; print(platform.python_version())')), $VENV/bin/gcsctl"
}

main
