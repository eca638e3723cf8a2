"""Debian packages for the image: the lock file (exact versions and sha256), downloads
checked against it, and moving the pins with --update-lock.

The archive only keeps current versions: when a pinned version has left it, the build says
so and names the way out, rather than quietly building something else.
"""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

APT = ["-o", "APT::Sandbox::User=root", "-qq"]


class LockError(Exception):
    pass


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    sha256: str


def _apt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["apt-get", *APT, *args], capture_output=True, text=True)


def _show(name: str, version: str = "") -> dict[str, str]:
    """The archive's record of a package (the candidate, or one version)."""
    spec = f"{name}={version}" if version else name
    res = subprocess.run(["apt-cache", "show", "--no-all-versions", spec], capture_output=True, text=True)
    if res.returncode != 0 or not res.stdout.strip():
        return {}
    record: dict[str, str] = {}
    for line in res.stdout.split("\n\n")[0].splitlines():
        key, sep, value = line.partition(": ")
        if sep and not line.startswith(" "):
            record[key] = value.strip()
    return record


def resolve(name: str) -> Pin:
    """The archive's current version of name (apt-get update first if it is unknown)."""
    record = _show(name)
    if not record:
        _apt("update")
        record = _show(name)
    if not record:
        raise LockError(f"package {name} is not in the Debian archive known to apt")
    return Pin(name, record["Version"], record.get("SHA256", ""))


def kernel_package(meta: str) -> str:
    """linux-image-amd64 -> the ABI package it depends on now (linux-image-6.1.0-NN-amd64)."""
    record = _show(meta)
    if not record:
        resolve(meta)
        record = _show(meta)
    for dep in record.get("Depends", "").split(","):
        dep = dep.strip().split(" ")[0]
        if dep.startswith("linux-image-"):
            return dep
    return meta  # already an ABI package


def read_lock(path: str) -> tuple[dict[str, str], dict[str, Pin]]:
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise LockError(f"{path} is missing: run `python3 initrd/build.py --update-lock` to pin the packages") from None
    pins = {name: Pin(name, p["version"], p["sha256"]) for name, p in data.get("packages", {}).items()}
    return data.get("kernel", {}), pins


def write_lock(path: str, kernel: dict[str, str], pins: dict[str, Pin]) -> None:
    lines = ["# Pinned by `python3 initrd/build.py --update-lock`: exact Debian versions and the sha256",
             "# of each .deb. The build refuses a download that does not match.", "", "[kernel]"]
    lines += [f'{key} = "{value}"' for key, value in sorted(kernel.items())]
    for name in sorted(pins):
        pin = pins[name]
        lines += ["", f'[packages."{name}"]', f'version = "{pin.version}"', f'sha256 = "{pin.sha256}"']
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(pin: Pin, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["apt-get", *APT, "download", f"{pin.name}={pin.version}"], cwd=cwd,
                          capture_output=True, text=True)


def fetch(pin: Pin, cache: str) -> str:
    """The .deb of pin, from the cache or the archive, checked against its sha256."""
    cached = os.path.join(cache, f"{pin.sha256}.deb")
    if os.path.exists(cached):
        return cached
    os.makedirs(cache, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        res = _download(pin, tmp)
        if res.returncode != 0:
            _apt("update")  # the package lists may only be stale
            res = _download(pin, tmp)
        if res.returncode != 0:
            current = _show(pin.name).get("Version", "none")
            raise LockError(
                f"{pin.name} {pin.version} (pinned in initrd/uvm.lock) is no longer in the Debian archive "
                f"(it offers {current}): run `python3 initrd/build.py --update-lock` to pin current versions, "
                f"or restore the .deb as {cached}.\napt-get said: {res.stderr.strip()[-300:]}")
        found = glob.glob(os.path.join(tmp, "*.deb"))
        if len(found) != 1:
            raise LockError(f"apt-get download {pin.name}={pin.version} gave {found}")
        digest = sha256_of(found[0])
        if digest != pin.sha256:
            raise LockError(f"{pin.name} {pin.version}: sha256 {digest} does not match the lock's {pin.sha256}")
        shutil.move(found[0], cached)
    return cached


def extract(deb: str, dest: str) -> None:
    """Unpack a .deb once (dest is reused while it is complete)."""
    done = os.path.join(dest, ".extracted")
    if os.path.exists(done):
        return
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    subprocess.run(["dpkg-deb", "-x", deb, dest], check=True, capture_output=True)
    open(done, "w").close()
