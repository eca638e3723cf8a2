"""The UVM image build: the cpio writer, reproducibility, the lock, ELF reading."""
import hashlib
import os
import stat
import subprocess
import sys

import pytest

from gcs.host.launcher import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "initrd"))
import cpio  # noqa: E402
import debian  # noqa: E402
import elf  # noqa: E402

from uvm_env import IMAGE_DIR, build_image  # noqa: E402


def test_cpio_is_sorted_fixed_and_readable(tmp_path):
    root = tmp_path / "root"
    (root / "b" / "c").mkdir(parents=True)
    (root / "a.txt").write_text("hello")
    (root / "b" / "c" / "x").write_bytes(b"\0" * 5)
    os.symlink("a.txt", root / "link")
    os.chmod(root / "a.txt", 0o640)
    out = str(tmp_path / "out.cpio")
    size = cpio.write(str(root), out, nodes=(cpio.Node("dev/console", stat.S_IFCHR | 0o600, 5, 1),))
    assert size == os.path.getsize(out) and size % 512 == 0
    entries = cpio.read(out)
    assert [e[0] for e in entries] == ["a.txt", "b", "b/c", "b/c/x", "dev/console", "link"]
    by_name = {name: (mode, data) for name, mode, data in entries}
    assert by_name["a.txt"] == (stat.S_IFREG | 0o640, b"hello")
    assert by_name["link"][1] == b"a.txt" and stat.S_ISLNK(by_name["link"][0])
    assert stat.S_ISCHR(by_name["dev/console"][0])
    # the kernel's own reader agrees: GNU cpio lists the same entries
    listed = subprocess.run(["cpio", "-t", "--quiet"], stdin=open(out, "rb"), capture_output=True, text=True).stdout
    assert listed.split() == [e[0] for e in entries]
    # same tree, different mtimes on disk: same bytes
    os.utime(root / "a.txt", (1, 1))
    again = str(tmp_path / "again.cpio")
    cpio.write(str(root), again, nodes=(cpio.Node("dev/console", stat.S_IFCHR | 0o600, 5, 1),))
    assert open(out, "rb").read() == open(again, "rb").read()


def test_the_image_builds_byte_for_byte_the_same(tmp_path):
    build_image()
    out = tmp_path / "uvm"
    out.mkdir()
    os.symlink(os.path.join(IMAGE_DIR, "debs"), out / "debs")  # the same downloads, checked against the lock
    res = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "initrd", "build.py"), "--out", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "initrd.img" in res.stderr and "MiB uncompressed" in res.stderr  # progress and the size report

    def digest(path):
        return hashlib.sha256(open(path, "rb").read()).hexdigest()

    assert digest(out / "initrd.img") == digest(os.path.join(IMAGE_DIR, "initrd.img"))
    assert digest(out / "vmlinux") == digest(os.path.join(IMAGE_DIR, "vmlinux"))
    names = {name for name, _, _ in cpio.read(str(out / "initrd.img"))}
    assert {"init", "bin/vsockexec", "bin/gcs", "opt/pygcs/gcs/main.pyc", "dev/console"} <= names
    assert not any(n.endswith(".py") and n.startswith("opt/pygcs") for n in names)  # sourceless
    assert not any(n.startswith("opt/pygcs/gcs/host") for n in names)  # no host tooling in the guest
    again = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "initrd", "build.py"), "--out", str(out)],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "up to date" in again.stderr  # cached


def test_a_pin_that_left_the_archive_names_the_way_out(tmp_path):
    pin = debian.Pin("busybox-static", "0.0-not-in-any-archive", "0" * 64)
    with pytest.raises(debian.LockError) as err:
        debian.fetch(pin, str(tmp_path))
    assert "is no longer in the Debian archive" in str(err.value) and "--update-lock" in str(err.value)


def test_a_download_that_does_not_match_its_sha256_is_refused(tmp_path):
    _, pins = debian.read_lock(os.path.join(REPO_ROOT, "initrd", "uvm.lock"))
    real = pins["libffi8"]
    with pytest.raises(debian.LockError, match="does not match the lock"):
        debian.fetch(debian.Pin(real.name, real.version, "f" * 64), str(tmp_path))


def test_elf_reading(tmp_path):
    assert "libc.so.6" in elf.needed(sys.executable) or elf.needed(sys.executable) == []
    assert elf.is_elf("/bin/sh") and not elf.is_elf(__file__)
    with pytest.raises(elf.ElfError):
        elf.Elf(__file__)
    build_image()
    ext4 = next(p for p in open(os.path.join(IMAGE_DIR, "root", "etc", "modules.order")).read().split()
                if p.endswith("/ext4.ko"))
    info = elf.modinfo(os.path.join(IMAGE_DIR, "root", "lib", "modules",
                                    open(os.path.join(IMAGE_DIR, "root", "etc", "modules.release")).read().strip(), ext4))
    assert info["name"] == ["ext4"] and "jbd2" in info["depends"][0]
