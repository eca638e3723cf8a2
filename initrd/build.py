"""Build the utility VM image described by initrd/uvm.toml: `vmlinux` + `initrd.img`.

    python3 initrd/build.py [--out build/uvm] [--update-lock] [--force]

* pinned: every Debian package at the version and sha256 of initrd/uvm.lock;
  `--update-lock` moves the pins to what the archive offers now;
* reproducible: same inputs, same bytes (sorted cpio entries, fixed mtimes, bytecode
  compiled by the image's own interpreter with a fixed hash seed);
* cached: the .debs, the extracted kernel and the finished image are reused while their
  inputs are unchanged; progress goes to stderr, the image's path to stdout.
"""
from __future__ import annotations

import argparse
import fnmatch
import glob
import hashlib
import json
import lzma
import os
import shutil
import stat
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import cpio  # noqa: E402
import debian  # noqa: E402
import elf  # noqa: E402

DESCRIPTION = os.path.join(HERE, "uvm.toml")
LOCK = os.path.join(HERE, "uvm.lock")
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib", "usr/lib")
SIG_MARKER = b"~Module signature appended~\n"
CONSOLE = cpio.Node("dev/console", stat.S_IFCHR | 0o600, 5, 1)

GCS_LAUNCHER = '''#!/usr/bin/python3.11 -SE
"""The agent as hcsshim starts it (`/bin/gcs -v4 -log-format json -loglevel info`): over
vsock (hv_sock under Hyper-V, virtio-vsock under QEMU) unless told otherwise."""
import sys

sys.path.insert(0, "{dest}")
from gcs.main import main

args = sys.argv[1:]
if not any(a.lstrip("-").split("=")[0] in ("transport", "use-inouterr", "bridge-stdio") for a in args):
    args = ["--transport", "vsock", *args]
main(args)
'''


class BuildError(Exception):
    pass


class Progress:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, msg: str) -> None:
        sys.stderr.write(f"[uvm build {time.monotonic() - self.t0:5.1f}s] {msg}\n")
        sys.stderr.flush()


def load_description(path: str = DESCRIPTION) -> dict:
    import tomllib
    with open(path, "rb") as f:
        return tomllib.load(f)


# --- the lock -------------------------------------------------------------------------------
def update_lock(desc: dict, say: Progress, lock_path: str = LOCK) -> None:
    meta = desc["kernel"]["package"]
    kpkg = debian.kernel_package(meta)
    names = [kpkg, *desc["packages"]]
    pins = {}
    for name in names:
        pin = debian.resolve(name)
        if not pin.sha256:
            raise BuildError(f"the archive gives no SHA256 for {name}")
        pins[name] = pin
        say(f"pinned {name} {pin.version}")
    release = kpkg.removeprefix("linux-image-")
    debian.write_lock(lock_path, {"package": kpkg, "release": release}, pins)
    say(f"wrote {lock_path}")


# --- inputs and the cache key ---------------------------------------------------------------
def agent_files(desc: dict) -> list[str]:
    """The repository files that go into the image as the agent (relative paths)."""
    agent = desc["agent"]
    out = []
    for package in agent["packages"]:
        for dirpath, dirnames, filenames in os.walk(os.path.join(REPO, package)):
            rel_dir = os.path.relpath(dirpath, REPO)
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__"
                                 and os.path.join(rel_dir, d) not in agent.get("exclude", []))
            out += [os.path.join(rel_dir, f) for f in sorted(filenames) if f.endswith(".py")]
    return out


def input_key(desc: dict) -> str:
    h = hashlib.sha256()
    own = [os.path.join("initrd", f) for f in ("build.py", "cpio.py", "debian.py", "elf.py", "uvm.toml", "uvm.lock")]
    own += [os.path.join("initrd", s) for s in desc["init"]["sources"]]
    own += [os.path.join("initrd", s) for s in desc["init"].get("scripts", {}).values()]
    for rel in own + agent_files(desc):
        h.update(rel.encode() + b"\0")
        with open(os.path.join(REPO, rel), "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    h.update(subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.encode())
    return h.hexdigest()


# --- the kernel -----------------------------------------------------------------------------
def extract_vmlinux(bzimage: str, out: str) -> None:
    """The bzImage's payload is XZ: decompressing it once here saves ~3 s per boot under TCG."""
    with open(bzimage, "rb") as f:
        data = f.read()
    start = data.find(b"\xfd7zXZ\x00")
    if start < 0:
        raise BuildError(f"{bzimage}: no XZ payload (not a Debian x86 kernel?)")
    vmlinux = lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(data[start:])
    with open(out + ".tmp", "wb") as f:
        f.write(vmlinux)
    os.replace(out + ".tmp", out)


class Modules:
    """A kernel's modules by name, with the dependency order of .modinfo's depends= and
    softdep pre: (busybox-style loaders and our init do no resolution of their own)."""

    def __init__(self, kdir: str, release: str, cache: str) -> None:
        self.base = os.path.join(kdir, "lib", "modules", release)
        self.by_name: dict[str, str] = {}
        for path in glob.glob(os.path.join(self.base, "kernel", "**", "*.ko"), recursive=True):
            self.by_name[_modname(os.path.basename(path)[:-3])] = os.path.relpath(path, self.base)
        self._alias_file = cache
        self._aliases: dict[str, list[str]] | None = None
        self._info: dict[str, dict[str, list[str]]] = {}  # module path -> its .modinfo, read once

    def aliases(self) -> dict[str, list[str]]:
        if self._aliases is None:
            try:
                with open(self._alias_file) as f:
                    self._aliases = json.load(f)
            except (OSError, ValueError):
                table: dict[str, list[str]] = {}
                for name, rel in sorted(self.by_name.items()):
                    for alias in elf.modinfo(os.path.join(self.base, rel)).get("alias", []):
                        table.setdefault(alias, []).append(name)
                with open(self._alias_file, "w") as f:
                    json.dump(table, f)
                self._aliases = table
        return self._aliases

    def resolve(self, wanted: list[str]) -> list[tuple[str, str]]:
        """(platform, module path) in load order. `wanted` entries may carry a platform
        ("hyperv:hv_sock"); a dependency is that platform's too unless something for every
        platform (or both platforms) needs it."""
        order: list[str] = []
        seen: set[str] = set()
        needed_by: dict[str, set[str]] = {}

        def visit(raw: str, chain: tuple[str, ...], platform: str) -> None:
            name = _modname(raw)
            if name in self.by_name:
                needed_by.setdefault(name, set()).add(platform)
            if name in seen:
                if name in self.by_name:
                    for dep in self._deps(name):  # the new platform reaches its dependencies too
                        visit(dep, chain + (name,), platform)
                return
            if name not in self.by_name:
                providers = self.aliases().get(raw, [])
                if not providers:
                    raise BuildError(f"kernel module {name} not found (needed by {' <- '.join(chain) or 'uvm.toml'})")
                for provider in sorted(providers, key=lambda p: "generic" in p):  # arch-optimised first
                    visit(provider, chain + (name,), platform)
                seen.add(name)
                return
            seen.add(name)
            for dep in self._deps(name):
                visit(dep, chain + (name,), platform)
            order.append(name)

        for entry in wanted:
            platform, _, name = entry.rpartition(":")
            visit(name, (), platform or "all")
        out = []
        for name in order:
            platforms = needed_by.get(name, {"all"})
            out.append((platforms.pop() if len(platforms) == 1 else "all", self.by_name[name]))
        return out

    def _modinfo(self, rel: str) -> dict[str, list[str]]:
        if rel not in self._info:
            self._info[rel] = elf.modinfo(os.path.join(self.base, rel))
        return self._info[rel]

    def _deps(self, name: str) -> list[str]:
        """softdep pre: modules first, then depends=."""
        info = self._modinfo(self.by_name[name])
        deps = []
        for soft in info.get("softdep", []):
            words = soft.split()
            if "pre:" in words:
                for dep in words[words.index("pre:") + 1:]:
                    if dep.endswith(":"):
                        break
                    deps.append(dep)
        return deps + [d for d in ",".join(info.get("depends", [])).split(",") if d]

    def depends(self, rel: str) -> list[str]:
        """A module's hard dependencies (what /init checks before loading it)."""
        return [_modname(d) for d in ",".join(self._modinfo(rel).get("depends", [])).split(",") if d]


def _modname(name: str) -> str:
    return name.replace("-", "_")


def strip_signature(data: bytes) -> bytes:
    if not data.endswith(SIG_MARKER):
        return data
    sig_len = int.from_bytes(data[-len(SIG_MARKER) - 4:-len(SIG_MARKER)], "big")
    return data[:-len(SIG_MARKER) - 12 - sig_len]


# --- assembling the root --------------------------------------------------------------------
def _copy(src: str, root: str, rel: str) -> None:
    dest = os.path.join(root, rel)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    if os.path.lexists(dest):
        return
    if os.path.islink(src):
        os.symlink(os.readlink(src), dest)
    else:
        shutil.copy2(src, dest)


def _package_files(pkgdir: str, patterns: list[str]) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(pkgdir):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            rel = os.path.relpath(os.path.join(dirpath, name), pkgdir)
            if any(fnmatch.fnmatch(rel, p) or (p.endswith("/**") and rel.startswith(p[:-2])) for p in patterns):
                out.append(rel)
    return out


def _library_index(pkgdirs: dict[str, str]) -> dict[str, tuple[str, str]]:
    """soname -> (package dir, path) for every shared object of the library packages."""
    index: dict[str, tuple[str, str]] = {}
    for pkgdir in pkgdirs.values():
        for lib_dir in LIB_DIRS:
            for path in sorted(glob.glob(os.path.join(pkgdir, lib_dir, "*.so*"))):
                index.setdefault(os.path.basename(path), (pkgdir, os.path.relpath(path, pkgdir)))
    return index


def _resolve_libraries(root: str, libs: dict[str, tuple[str, str]], say: Progress) -> list[str]:
    """Copy in what every ELF file needs; drop lib-dynload modules that cannot load."""
    dropped = []
    todo = [p for p in _walk_files(root) if elf.is_elf(p)]
    done: set[str] = set()
    while todo:
        path = todo.pop()
        if path in done or not os.path.exists(path):
            continue
        done.add(path)
        try:
            needs = elf.needed(path)
        except elf.ElfError:
            continue
        missing = [n for n in needs if n not in libs and not _present(root, n)]
        if missing:
            if "/lib-dynload/" in path:
                os.unlink(path)
                dropped.append(f"{os.path.basename(path)} (needs {', '.join(missing)})")
                continue
            raise BuildError(f"{os.path.relpath(path, root)} needs {', '.join(missing)}: add its package to uvm.toml")
        for soname in needs:
            if _present(root, soname):
                continue
            pkgdir, rel = libs[soname]
            _copy_with_links(pkgdir, rel, root)
            todo.append(os.path.join(root, rel))
    # the dynamic loader itself (PT_INTERP of every executable here)
    pkgdir, rel = libs["ld-linux-x86-64.so.2"]
    _copy_with_links(pkgdir, rel, root)
    os.makedirs(os.path.join(root, "lib64"), exist_ok=True)
    if not os.path.lexists(os.path.join(root, "lib64", "ld-linux-x86-64.so.2")):
        os.symlink("/" + rel, os.path.join(root, "lib64", "ld-linux-x86-64.so.2"))
    if dropped:
        say(f"dropped {len(dropped)} lib-dynload modules whose libraries are not in the image: {', '.join(dropped)}")
    return dropped


def _present(root: str, soname: str) -> bool:
    return any(os.path.lexists(os.path.join(root, d, soname)) for d in LIB_DIRS)


def _copy_with_links(pkgdir: str, rel: str, root: str) -> None:
    """A soname is usually a symlink to the real file: copy both."""
    _copy(os.path.join(pkgdir, rel), root, rel)
    src = os.path.join(pkgdir, rel)
    if os.path.islink(src):
        target = os.path.normpath(os.path.join(os.path.dirname(rel), os.readlink(src)))
        _copy(os.path.join(pkgdir, target), root, target)


def _walk_files(root: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if not os.path.islink(os.path.join(dirpath, f))]
    return out


def _prune(stdlib: str, patterns: list[str]) -> None:
    for pattern in patterns:
        for path in glob.glob(os.path.join(stdlib, pattern)):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
    for dirpath, dirnames, _ in os.walk(stdlib):
        for d in list(dirnames):
            if d == "__pycache__":
                shutil.rmtree(os.path.join(dirpath, d))
                dirnames.remove(d)


def compile_c(sources: list[str], out_dir: str, say: Progress) -> dict[str, str]:
    """The init programs, built with the machine's gcc against Debian's glibc (the image
    carries the same libc6). Cached by source hash."""
    built = {}
    os.makedirs(out_dir, exist_ok=True)
    for src in sources:
        path = os.path.join(HERE, src)
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:16]
        name = os.path.splitext(os.path.basename(src))[0]
        out = os.path.join(out_dir, f"{name}-{digest}")
        if not os.path.exists(out):
            if shutil.which("gcc") is None:
                raise BuildError("gcc is needed to build /init (apt-get install gcc libc6-dev)")
            res = subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-ffile-prefix-map=" + HERE + "=.",
                                  "-o", out + ".tmp", path], capture_output=True, text=True)
            if res.returncode != 0:
                raise BuildError(f"compiling {src} failed:\n{res.stderr}")
            subprocess.run(["strip", "--strip-all", out + ".tmp"], check=True)
            os.replace(out + ".tmp", out)
            say(f"compiled {src}")
        built[name] = out
    return built


def compile_python(root: str, interpreter: str) -> None:
    """Bytecode by the image's own interpreter, in a chroot of the image, written next to the
    sources (legacy layout: importable without them), then the sources go."""
    script = ("import compileall, sys, py_compile\n"
              "ok = all(compileall.compile_dir(d, quiet=2, legacy=True, workers=1,\n"
              "         invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH) for d in sys.argv[1:])\n"
              "sys.exit(0 if ok else 1)\n")
    dirs = [d for d in ("/usr/lib/python3.11", "/usr/lib/python3/dist-packages", "/opt/pygcs")
            if os.path.isdir(os.path.join(root, d.lstrip("/")))]
    env = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "LC_ALL": "C"}
    res = subprocess.run([shutil.which("chroot") or "/usr/sbin/chroot", root, interpreter, "-S", "-E", "-B", "-c", script, *dirs], env=env,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise BuildError(f"compiling the image's Python failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    for d in dirs:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, d.lstrip("/"))):
            for name in filenames:
                if name.endswith(".py"):
                    os.unlink(os.path.join(dirpath, name))  # a file, or a symlink to one


def write_etc(root: str, desc: dict, release: str, modules: list[tuple[str, str]], mods: "Modules",
              early: int) -> None:
    etc = os.path.join(root, "etc")
    os.makedirs(etc, exist_ok=True)
    init = desc["init"]
    files = {
        # `background` separates what /init loads before the agent from the rest
        "modules.order": "".join(("background\n" if i == early else "") + " ".join([platform, m, *mods.depends(m)])
                                 + "\n" for i, (platform, m) in enumerate(modules)),
        "modules.release": release + "\n",
        "uvm-init.conf": "".join(f"{k}={init[k]}\n" for k in ("restart_min_ms", "restart_max_ms", "restart_stable_s"))
        + f"default={desc['services']['default']}\n",
        "passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        "group": "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
        "hostname": "uvm\n",
    }
    for name, text in files.items():
        with open(os.path.join(etc, name), "w") as f:
            f.write(text)
    os.symlink("/proc/self/mounts", os.path.join(etc, "mtab"))


def build(out: str, force: bool = False, say: Progress | None = None) -> dict:
    say = say or Progress()
    desc = load_description()
    kernel, pins = debian.read_lock(LOCK)
    missing = [n for n in [kernel.get("package", ""), *desc["packages"]] if n not in pins]
    if missing:
        raise BuildError(f"uvm.lock pins no version for {', '.join(missing)}: run `python3 initrd/build.py --update-lock`")
    key = input_key(desc)
    manifest_path = os.path.join(out, "manifest.json")
    vmlinux, initrd = os.path.join(out, "vmlinux"), os.path.join(out, "initrd.img")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
        if not force and manifest.get("key") == key and os.path.exists(vmlinux) and os.path.exists(initrd):
            say(f"up to date: {initrd} ({manifest['initrd_bytes'] / 2**20:.1f} MiB)")
            return manifest
    except (OSError, ValueError):
        pass

    cache = os.path.join(out, "debs")
    say(f"fetching {len(pins)} pinned Debian packages")
    debs = {name: debian.fetch(pin, cache) for name, pin in pins.items()}
    pkgdirs = {}
    for name, deb in debs.items():
        pkgdirs[name] = os.path.join(out, "pkgs", f"{name}-{pins[name].sha256[:12]}")
        debian.extract(deb, pkgdirs[name])

    kname, release = kernel["package"], kernel["release"]
    kdir = pkgdirs[kname]
    if not os.path.exists(os.path.join(out, "vmlinux")) or manifest_kernel(out) != pins[kname].sha256:
        say(f"extracting vmlinux from {kname} {pins[kname].version}")
        extract_vmlinux(os.path.join(kdir, "boot", f"vmlinuz-{release}"), vmlinux)
    mods = Modules(kdir, release, os.path.join(out, f"aliases-{pins[kname].sha256[:12]}.json"))
    early = mods.resolve(desc["modules"].get("early", []))
    module_paths = early + [m for m in mods.resolve(desc["modules"]["early"] + desc["modules"]["load"])
                            if m not in early]
    say(f"{len(module_paths)} kernel modules in load order ({len(early)} before the agent starts)")

    root = os.path.join(out, "root")
    shutil.rmtree(root, ignore_errors=True)
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "run", "tmp", "root", "var", "usr/bin", "usr/sbin", "mnt"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    os.chmod(os.path.join(root, "root"), 0o700)
    for _, rel in module_paths:
        dest = os.path.join(root, "lib", "modules", release, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(os.path.join(mods.base, rel), "rb") as f:
            data = f.read()
        with open(dest, "wb") as f:
            f.write(strip_signature(data) if desc["modules"].get("strip_signatures") else data)

    libraries = {n: pkgdirs[n] for n, p in desc["packages"].items() if p.get("libraries")}
    for name, spec in desc["packages"].items():
        for rel in _package_files(pkgdirs[name], spec.get("files", [])):
            _copy(os.path.join(pkgdirs[name], rel), root, rel)
    python = desc["python"]
    stdlib = os.path.join(root, "usr", "lib", "python3.11")
    _prune(stdlib, python.get("prune", []))
    os.symlink("python3.11", os.path.join(root, "usr", "bin", "python3"))

    agent = desc["agent"]
    dest = agent["dest"]
    for rel in agent_files(desc):
        _copy(os.path.join(REPO, rel), root, os.path.join(dest.lstrip("/"), rel))
    with open(os.path.join(root, "bin", "gcs"), "w") as f:
        f.write(GCS_LAUNCHER.format(dest=dest))
    os.chmod(os.path.join(root, "bin", "gcs"), 0o755)

    programs = compile_c(desc["init"]["sources"], os.path.join(out, "init-bin"), say)
    shutil.copy2(programs["init"], os.path.join(root, "init"))
    shutil.copy2(programs["vsockexec"], os.path.join(root, "bin", "vsockexec"))
    for target, source in desc["init"].get("scripts", {}).items():
        os.makedirs(os.path.dirname(os.path.join(root, target)), exist_ok=True)
        shutil.copy2(os.path.join(REPO, "initrd", source), os.path.join(root, target))
        os.chmod(os.path.join(root, target), 0o755)

    busybox = os.path.join(root, "bin", "busybox")
    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        link = os.path.join(root, applet)
        name = os.path.basename(applet)
        if any(os.path.lexists(os.path.join(root, d, name)) for d in ("bin", "sbin", "usr/bin", "usr/sbin")):
            continue  # a real program of that name is in the image
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink("/bin/busybox", link)
    write_etc(root, desc, release, module_paths, mods, len(early))

    _resolve_libraries(root, _library_index(libraries), say)
    if python.get("sourceless"):
        say("compiling Python to sourceless bytecode with the image's interpreter")
        compile_python(root, python["interpreter"])

    say("writing initrd.img")
    size = cpio.write(root, initrd, nodes=(CONSOLE,))
    manifest = {"key": key, "initrd_bytes": size, "vmlinux_bytes": os.path.getsize(vmlinux),
                "kernel": {"package": kname, "version": pins[kname].version, "sha256": pins[kname].sha256,
                           "release": release},
                "initrd_sha256": debian.sha256_of(initrd), "parts": _parts(root)}
    with open(manifest_path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(manifest_path + ".tmp", manifest_path)
    say(f"initrd.img {size / 2**20:.1f} MiB uncompressed ({_fmt_parts(manifest['parts'])}); "
        f"vmlinux {manifest['vmlinux_bytes'] / 2**20:.1f} MiB")
    return manifest


def manifest_kernel(out: str) -> str:
    try:
        with open(os.path.join(out, "manifest.json")) as f:
            return json.load(f)["kernel"]["sha256"]
    except (OSError, ValueError, KeyError):
        return ""


def _parts(root: str) -> dict[str, int]:
    groups = {"modules": "lib/modules", "python stdlib": "usr/lib/python3.11", "agent": "opt",
              "python deps": "usr/lib/python3", "busybox": "bin/busybox", "python": "usr/bin/python3.11"}
    sizes = dict.fromkeys(list(groups) + ["libraries", "other"], 0)
    for path in _walk_files(root):
        rel = os.path.relpath(path, root)
        size = os.path.getsize(path)
        for group, prefix in groups.items():
            if rel == prefix or rel.startswith(prefix + "/"):
                sizes[group] += size
                break
        else:
            sizes["libraries" if ".so" in rel else "other"] += size
    return sizes


def _fmt_parts(parts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v / 2**20:.1f}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(REPO, "build", "uvm"))
    parser.add_argument("--update-lock", action="store_true", help="pin the versions the archive offers now")
    parser.add_argument("--force", action="store_true", help="rebuild even when the inputs are unchanged")
    args = parser.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    say = Progress()
    try:
        if args.update_lock:
            update_lock(load_description(), say)
        build(out, args.force, say)
    except (BuildError, debian.LockError) as err:
        sys.stderr.write(f"uvm build: {err}\n")
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
