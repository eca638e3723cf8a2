"""Host-side OCI image tooling: reading images (OCI layouts, docker save tarballs), layer
tars -> ext4 layer images, checked by mounting them for real (loop devices, overlayfs)."""
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile

import pytest

from gcs.host.images import detach_loop
from gcs.host.layers import layer_image
from gcs.host.oci import ImageConfig, ImageError, open_image, process_args, write_image
from gcs.host.samples import busybox_rootfs

from conftest import requires_root

pytestmark = requires_root
PREFIX = "pygcs-oci-"
CONFIG = {"Env": ["PATH=/bin", "GREETING=hi"], "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["cat /etc/motd"],
          "WorkingDir": "/data", "User": "1000:1000"}
REF = "pygcs/test:latest"


def _tempdir() -> str:
    return tempfile.mkdtemp(prefix=PREFIX)


def _leftovers() -> list[str]:
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout.splitlines()
    with open("/proc/self/mounts") as f:
        mounts = f.read().splitlines()
    return [line for line in loops + mounts if PREFIX in line]


@pytest.fixture(scope="module", autouse=True)
def no_temp_dirs_left():
    """Outermost of all: the module leaves no temporary directory of its own behind."""
    tmp = tempfile.gettempdir()
    before = {n for n in os.listdir(tmp) if n.startswith(PREFIX)}
    yield
    assert {n for n in os.listdir(tmp) if n.startswith(PREFIX)} - before == set()


@pytest.fixture(autouse=True)
def no_leftovers():
    """Runs outermost: after every other fixture is torn down, nothing of ours is mounted."""
    yield
    assert _leftovers() == []


@pytest.fixture
def scratch():
    path = _tempdir()
    yield path
    shutil.rmtree(path)


class Mounts:
    """Loop devices and mounts, undone in reverse order however the test ends."""

    def __init__(self) -> None:
        self.undo: list[tuple[str, str]] = []

    def loop(self, image: str) -> str:
        dev = subprocess.run(["losetup", "-r", "-f", "--show", image], capture_output=True, text=True,
                             check=True).stdout.strip()
        self.undo.append(("loop", dev))
        return dev

    def mount(self, source: str, target: str, fstype: str, options: str) -> str:
        os.makedirs(target, exist_ok=True)
        subprocess.run(["mount", "-t", fstype, "-o", options, source, target], capture_output=True, text=True,
                       check=True)
        self.undo.append(("mount", target))
        return target

    def ext4(self, image: str, target: str) -> str:
        return self.mount(self.loop(image), target, "ext4", "ro,noload")

    def cleanup(self) -> None:
        failed = []
        for kind, what in reversed(self.undo):
            if kind == "mount":
                if subprocess.run(["umount", what], capture_output=True).returncode != 0:
                    subprocess.run(["umount", "-l", what], capture_output=True)
                    failed.append(what)
            elif not detach_loop(what):
                failed.append(what)
        self.undo.clear()
        assert failed == [], f"could not undo cleanly: {failed}"


@pytest.fixture
def mounts():
    m = Mounts()
    yield m
    m.cleanup()


# -- the test image ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def layer_dirs():
    """A busybox root filesystem, and a second layer that deletes, replaces, hides (opaque
    directory) and adds files: a hard link, symlinks, a fifo, a device, xattrs, owners, set-id."""
    base = _tempdir()
    lower, upper = os.path.join(base, "lower"), os.path.join(base, "upper")
    busybox_rootfs(lower)
    _write(lower, "etc/motd", "old motd\n")
    _write(lower, "opq/old1", "old\n")
    _write(lower, "opq/sub/old2", "old\n")
    _write(lower, "data/keep", "kept\n")

    _write(upper, "data/.wh.hello", "")  # deletes data/hello of the busybox layer
    _write(upper, "etc/motd", "new motd\n")
    _write(upper, "opq/.wh..wh..opq", "")
    _write(upper, "opq/new", "new\n")
    _write(upper, "data/target", "shared\n")
    os.link(os.path.join(upper, "data/target"), os.path.join(upper, "data/hardlink"))
    os.symlink("target", os.path.join(upper, "data/link"))
    os.symlink("/bin/busybox", os.path.join(upper, "data/abs"))
    os.mkfifo(os.path.join(upper, "data/fifo"))
    os.mknod(os.path.join(upper, "data/null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
    _write(upper, "data/xattr", "with xattrs\n")
    os.setxattr(os.path.join(upper, "data/xattr"), "user.test", b"value")
    os.setxattr(os.path.join(upper, "data/xattr"), "user.binary", b"\xff\x00\x80")
    _write(upper, "data/suid", "#!/bin/sh\n")
    os.chown(os.path.join(upper, "data/suid"), 1000, 1000)
    os.chmod(os.path.join(upper, "data/suid"), 0o4755)
    os.makedirs(os.path.join(upper, "home/app/private"))
    os.chown(os.path.join(upper, "home/app/private"), 1000, 1000)
    os.chmod(os.path.join(upper, "home/app/private"), 0o750)
    yield lower, upper
    shutil.rmtree(base)


def _write(root: str, rel: str, text: str) -> None:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _blob(layout: str, digest: str) -> str:
    return os.path.join(layout, "blobs", "sha256", digest.split(":")[1])


def _index_manifest(layout: str) -> tuple[dict, dict]:
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    with open(_blob(layout, index["manifests"][0]["digest"])) as f:
        return index, json.load(f)


def _rewrite_manifest(layout: str, change) -> None:
    """Edit an OCI layout's manifest, keeping every digest right."""
    index, manifest = _index_manifest(layout)
    change(manifest)
    data = json.dumps(manifest).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(_blob(layout, digest), "wb") as f:
        f.write(data)
    index["manifests"][0].update(digest=digest, size=len(data))
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)


def _pack_layout(layout: str, dest: str, with_index: bool = True) -> None:
    """An OCI layout in a tar with docker's manifest.json, as docker save (25+) writes it."""
    _, manifest = _index_manifest(layout)
    entry = {"Config": "blobs/sha256/" + manifest["config"]["digest"][7:], "RepoTags": [REF],
             "Layers": ["blobs/sha256/" + d["digest"][7:] for d in manifest["layers"]]}
    with tarfile.open(dest, "w") as tar:
        for name in sorted(os.listdir(layout)):
            if with_index or name not in ("index.json", "oci-layout"):
                tar.add(os.path.join(layout, name), arcname=name)
        data = json.dumps([entry]).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


FORMATS = ["oci", "docker", "oci-tar", "docker-blobs", "oci-gzip"]


def _make(fmt: str, dirs, where: str) -> str:
    """The test image in one of its forms; returns the path to open."""
    if fmt in ("oci", "docker"):
        path = os.path.join(where, "image" + (".tar" if fmt == "docker" else ""))
        write_image(path, list(dirs), CONFIG, fmt=fmt)
        return path
    layout = os.path.join(where, "layout")
    write_image(layout, list(dirs), CONFIG)
    if fmt == "oci-gzip":  # the same layers, gzip-compressed (as registries serve them)
        _, manifest = _index_manifest(layout)
        gz = []
        for i, d in enumerate(manifest["layers"]):
            gz.append(os.path.join(where, f"layer{i}.tar.gz"))
            with open(_blob(layout, d["digest"]), "rb") as src, gzip.GzipFile(gz[-1], "wb", mtime=0) as dst:
                shutil.copyfileobj(src, dst)
        path = os.path.join(where, "gzipped")
        write_image(path, gz, CONFIG)
        return path
    path = os.path.join(where, "packed.tar")
    _pack_layout(layout, path, with_index=fmt == "oci-tar")
    return path


@pytest.mark.parametrize("fmt", FORMATS)
def test_open_image(fmt, layer_dirs, scratch):
    image = open_image(_make(fmt, layer_dirs, scratch))
    assert image.ref == REF
    assert image.config == ImageConfig(env=["PATH=/bin", "GREETING=hi"], entrypoint=["/bin/sh", "-c"],
                                       cmd=["cat /etc/motd"], working_dir="/data", user="1000:1000")
    assert len(image.layers) == 2
    for layer in image.layers:
        assert layer.compression == ("gzip" if fmt == "oci-gzip" else "tar")
        assert layer.media_type.endswith("+gzip" if fmt == "oci-gzip" else ".tar")
        with layer.open() as stream:
            data = stream.read()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == (layer.diff_id or layer.digest)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            names = tar.getnames()
        if layer is image.layers[0]:
            assert "bin/busybox" in names and "data/hello" in names
        else:
            assert "data/.wh.hello" in names and "opq/.wh..wh..opq" in names
    assert process_args(image.config, []) == ["/bin/sh", "-c", "cat /etc/motd"]


def _put(layout: str, doc: dict, media_type: str | None = None) -> dict:
    data = json.dumps(doc).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(_blob(layout, digest), "wb") as f:
        f.write(data)
    return {"mediaType": media_type or doc["mediaType"], "digest": digest, "size": len(data)}


def test_nested_index_and_refs(layer_dirs, scratch):
    """A multi-platform image: index.json -> an index of per-platform manifests (and a
    buildkit attestation); the linux/amd64 one is taken. Several images: chosen by ref."""
    layout = os.path.join(scratch, "layout")
    write_image(layout, list(layer_dirs), CONFIG)
    index, manifest = _index_manifest(layout)
    amd64 = dict(index["manifests"][0], annotations={})
    with open(_blob(layout, manifest["config"]["digest"])) as f:
        config = json.load(f)
    config["rootfs"]["diff_ids"] = config["rootfs"]["diff_ids"][:1]
    small_config = _put(layout, config, manifest["config"]["mediaType"])
    small = _put(layout, dict(manifest, config=small_config, layers=manifest["layers"][:1]))  # another "platform"
    platforms = [dict(small, platform={"os": "linux", "architecture": "arm64"}),
                 dict(amd64, platform={"os": "linux", "architecture": "amd64"}),
                 dict(small, platform={"os": "unknown", "architecture": "unknown"})]
    nested = _put(layout, {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                           "manifests": platforms})
    named = lambda desc, ref: dict(desc, annotations={"io.containerd.image.name": ref})  # noqa: E731
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(dict(index, manifests=[named(nested, "multi:1"), named(small, "small:1")]), f)
    with pytest.raises(ImageError, match="holds 2 images.*name one"):
        open_image(layout)
    image = open_image(layout, ref="multi:1")
    assert (image.ref, len(image.layers)) == ("multi:1", 2)
    assert len(open_image(layout, ref="small:1").layers) == 1
    with pytest.raises(ImageError, match="no image named 'other:1'.*multi:1, small:1"):
        open_image(layout, ref="other:1")
    with open(os.path.join(layout, "index.json"), "w") as f:  # only arm64 and an attestation: none for us
        json.dump(dict(index, manifests=[_put(layout, {"schemaVersion": 2, "mediaType": nested["mediaType"],
                                                      "manifests": [platforms[0], platforms[2]]})]), f)
    assert len(open_image(layout).layers) == 1  # the only real image


def test_process_args():
    cfg = ImageConfig(entrypoint=["/entry", "-x"], cmd=["default"])
    assert process_args(cfg, []) == ["/entry", "-x", "default"]
    assert process_args(cfg, ["a", "b"]) == ["/entry", "-x", "a", "b"]  # replaces Cmd only
    assert process_args(ImageConfig(cmd=["/bin/sh"]), []) == ["/bin/sh"]
    assert process_args(ImageConfig(cmd=["/bin/sh"]), ["ls", "-l"]) == ["ls", "-l"]
    with pytest.raises(ImageError, match="neither Entrypoint nor Cmd"):
        process_args(ImageConfig(), [])


@pytest.mark.parametrize("fmt", FORMATS)
def test_layer_images_mounted_as_overlay(fmt, layer_dirs, scratch, mounts):
    image = open_image(_make(fmt, layer_dirs, scratch))
    cache = os.path.join(scratch, "cache")
    paths = [layer_image(layer, cache) for layer in image.layers]
    for layer, path in zip(image.layers, paths):
        assert path == os.path.join(cache, layer.digest[7:] + ".ext4")
        size = os.path.getsize(path)
        assert size % (1 << 20) == 0 and size >= 2 << 20
        assert open(path, "rb").read(2048)[1080:1082] == b"\x53\xef"  # the ext4 magic at byte 1080
    before = [os.stat(p) for p in paths]
    assert [layer_image(layer, cache) for layer in image.layers] == paths  # cached, not rebuilt
    after = [os.stat(p) for p in paths]
    assert [(s.st_ino, s.st_mtime_ns) for s in after] == [(s.st_ino, s.st_mtime_ns) for s in before]
    assert sorted(os.listdir(cache)) == sorted(os.path.basename(p) for p in paths)  # no temp left

    bottom = mounts.ext4(paths[0], os.path.join(scratch, "bottom"))
    top = mounts.ext4(paths[1], os.path.join(scratch, "top"))
    # The top layer alone: OCI whiteouts became overlayfs ones.
    wh = os.lstat(os.path.join(top, "data/hello"))
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert os.getxattr(os.path.join(top, "opq"), "trusted.overlay.opaque") == b"y"
    found = [n for _, ds, fs in os.walk(top) for n in ds + fs if n.startswith(".wh.")]
    assert found == []

    merged = mounts.mount("overlay", os.path.join(scratch, "merged"), "overlay", f"ro,lowerdir={top}:{bottom}")
    m = lambda rel: os.path.join(merged, rel)  # noqa: E731
    assert not os.path.lexists(m("data/hello"))  # deleted
    assert open(m("data/keep")).read() == "kept\n"
    assert open(m("etc/motd")).read() == "new motd\n"  # replaced
    assert os.listdir(m("opq")) == ["new"]  # opaque: the lower content is hidden
    target, link = os.stat(m("data/target")), os.stat(m("data/hardlink"))
    assert (target.st_ino, target.st_nlink) == (link.st_ino, 2)
    assert open(m("data/hardlink")).read() == "shared\n"
    assert os.readlink(m("data/link")) == "target" and os.readlink(m("data/abs")) == "/bin/busybox"
    assert stat.S_ISFIFO(os.lstat(m("data/fifo")).st_mode)
    null = os.lstat(m("data/null"))
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert os.getxattr(m("data/xattr"), "user.test") == b"value"
    assert os.getxattr(m("data/xattr"), "user.binary") == b"\xff\x00\x80"
    suid = os.stat(m("data/suid"))
    assert (stat.S_IMODE(suid.st_mode), suid.st_uid, suid.st_gid) == (0o4755, 1000, 1000)
    private = os.stat(m("home/app/private"))
    assert (stat.S_IMODE(private.st_mode), private.st_uid) == (0o750, 1000)
    assert stat.S_IMODE(os.stat(m("tmp")).st_mode) == 0o1777  # sticky bit kept
    assert os.path.islink(m("bin/sh")) and os.readlink(m("bin/sh")) == "busybox"
    # And the merged tree runs: busybox from the bottom layer, the file from the top.
    out = subprocess.run(["chroot", merged] + process_args(image.config, []), capture_output=True, text=True,
                         check=True, timeout=30).stdout
    assert out == "new motd\n"


# -- bad images -------------------------------------------------------------------------------

def test_missing_path(scratch):
    with pytest.raises(ImageError, match="no such file or directory"):
        open_image(os.path.join(scratch, "nothing-here"))


def test_not_an_image(scratch):
    _write(scratch, "notes.txt", "not an image\n")
    with pytest.raises(ImageError, match="not an image: the directory has neither index.json"):
        open_image(scratch)
    with pytest.raises(ImageError, match="not an image: neither an OCI layout directory nor a docker save"):
        open_image(os.path.join(scratch, "notes.txt"))
    with tarfile.open(os.path.join(scratch, "other.tar"), "w") as tar:
        tar.add(os.path.join(scratch, "notes.txt"), arcname="notes.txt")
    with pytest.raises(ImageError, match="not an image: the archive has neither"):
        open_image(os.path.join(scratch, "other.tar"))


def test_config_digest_mismatch(layer_dirs, scratch):
    layout = os.path.join(scratch, "layout")
    write_image(layout, list(layer_dirs), CONFIG)
    digest = _index_manifest(layout)[1]["config"]["digest"]
    with open(_blob(layout, digest), "r+b") as f:
        f.seek(2)
        f.write(b"X")
    with pytest.raises(ImageError, match=f"blob {digest}: content does not match its digest"):
        open_image(layout)


@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_layer_digest_mismatch(fmt, layer_dirs, scratch):
    path = _make(fmt, layer_dirs, scratch)
    image = open_image(path)
    # Same length, so the tar still parses: only the digest can tell.
    victim = _blob(path, image.layers[1].digest) if fmt == "oci" else path
    with open(victim, "r+b") as f:
        data = f.read()
        assert data.count(b"new motd\n") == 1
        f.seek(data.index(b"new motd\n"))
        f.write(b"NEW MOTD\n")
    cache = os.path.join(scratch, "cache")
    layer_image(image.layers[0], cache)
    with pytest.raises(ImageError, match=f"layer {image.layers[1].digest}.*does not match its digest"):
        layer_image(image.layers[1], cache)
    assert os.listdir(cache) == [image.layers[0].digest[7:] + ".ext4"]  # nothing half-made left


def test_unknown_media_type(layer_dirs, scratch):
    layout = os.path.join(scratch, "layout")
    write_image(layout, [layer_dirs[0]], CONFIG)
    _rewrite_manifest(layout, lambda m: m["layers"][0].update(mediaType="application/x-lzma-tar"))
    with pytest.raises(ImageError, match="media type 'application/x-lzma-tar', which is not a known layer type"):
        open_image(layout)


def test_zstd_layer_without_zstandard(layer_dirs, scratch):
    try:
        import zstandard  # noqa: F401
        pytest.skip("zstandard is installed here")
    except ImportError:
        pass
    layout = os.path.join(scratch, "layout")
    write_image(layout, [layer_dirs[0]], CONFIG)
    _rewrite_manifest(layout, lambda m: m["layers"][0].update(mediaType="application/vnd.oci.image.layer.v1.tar+zstd"))
    image = open_image(layout)
    assert image.layers[0].compression == "zstd"
    with pytest.raises(ImageError, match=f"layer {image.layers[0].digest} is zstd-compressed.*zstandard"):
        image.layers[0].open()


def _tar(path: str, members: list[tuple[str, str, str]]) -> str:
    """A hand-made layer tar: (type, name, data or link target)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, arg in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif kind == "file":
                info.size = len(arg)
                tar.addfile(info, io.BytesIO(arg.encode()))
            else:
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = arg
                tar.addfile(info)
    return path


ESCAPES = {
    "dotdot": ([("file", "ok", "fine"), ("file", "../escape", "pwned")], "path with '..'"),
    "deep-dotdot": ([("dir", "a", ""), ("file", "a/../../escape", "pwned")], "path with '..'"),
    "absolute": ([("file", "{outside}/escape", "pwned")], "absolute path"),
    "through-symlink": ([("symlink", "lnk", "{outside}"), ("file", "lnk/escape", "pwned")],
                        "goes through the symlink 'lnk'"),
    "through-relative-symlink": ([("dir", "d", ""), ("symlink", "d/up", "../../../.."),
                                  ("file", "d/up/escape", "pwned")], "goes through the symlink 'up'"),
    "hardlink-out": ([("hardlink", "h", "../escape")], "tar entry 'h': hard link target '../escape': path with '..'"),
    "hardlink-absolute": ([("hardlink", "h", "{outside}/victim")], "hard link target .*: absolute path"),
    "whiteout-of-dot": ([("dir", "d", ""), ("file", "d/.wh..", "")], "whiteout of no name"),
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_escaping_entries_are_refused(case, scratch):
    outside = os.path.join(scratch, "outside")
    os.mkdir(outside)
    _write(outside, "victim", "untouched\n")
    members = [(k, n.format(outside=outside), a.format(outside=outside)) for k, n, a in ESCAPES[case][0]]
    layout = os.path.join(scratch, "layout")
    write_image(layout, [_tar(os.path.join(scratch, "evil.tar"), members)], {})
    cache = os.path.join(scratch, "deep", "cache")
    with pytest.raises(ImageError, match=ESCAPES[case][1]):
        layer_image(open_image(layout).layers[0], cache)
    assert os.listdir(cache) == []  # no image, no temp directory
    assert sorted(os.listdir(outside)) == ["victim"]
    assert open(os.path.join(outside, "victim")).read() == "untouched\n"
    escaped = [os.path.join(d, n) for d, _, ns in os.walk(scratch) for n in ns if n == "escape"]
    assert escaped == [] and not os.path.exists("/escape")


def test_links_out_are_kept_as_links_not_followed(scratch, mounts):
    """Absolute symlinks are normal in images; they must stay links: never written through,
    and a hard link to one links the symlink, not what it names."""
    outside = os.path.join(scratch, "outside")
    os.mkdir(outside)
    _write(outside, "victim", "untouched\n")
    victim = os.path.join(outside, "victim")
    members = [("symlink", "s", victim), ("hardlink", "h", "s"),
               ("symlink", "w", victim), ("file", "w", "replaced, not written through\n")]
    layout = os.path.join(scratch, "layout")
    write_image(layout, [_tar(os.path.join(scratch, "links.tar"), members)], {})
    path = layer_image(open_image(layout).layers[0], os.path.join(scratch, "cache"))
    assert open(victim).read() == "untouched\n"
    mnt = mounts.ext4(path, os.path.join(scratch, "mnt"))
    assert os.readlink(os.path.join(mnt, "s")) == victim and os.readlink(os.path.join(mnt, "h")) == victim
    # (mke2fs -d copies a hard-linked symlink as two symlinks: same target, two inodes.)
    assert os.path.islink(os.path.join(mnt, "h"))
    assert open(os.path.join(mnt, "w")).read() == "replaced, not written through\n"


def _plain_layer(dirs, scratch: str) -> bytes:
    layout = os.path.join(scratch, "plain")
    write_image(layout, [dirs[0]], {})
    with open(_blob(layout, _index_manifest(layout)[1]["layers"][0]["digest"]), "rb") as f:
        return f.read()


def _corrupt_truncated(data: bytes) -> bytes:
    return data[:len(data) // 2 + 100]


def _corrupt_header(data: bytes) -> bytes:
    # Garble the header of a member half-way through: tarfile alone would take it for the end.
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    second = members[len(members) // 2].offset
    return data[:second] + b"\x7f" * 512 + data[second + 512:]


@pytest.mark.parametrize("kind", ["truncated", "bad-header", "truncated-gzip"])
def test_corrupt_layer_tar(kind, layer_dirs, scratch):
    data = _plain_layer(layer_dirs, scratch)
    if kind == "truncated":
        bad = _corrupt_truncated(data)
    elif kind == "bad-header":
        bad = _corrupt_header(data)
    else:
        bad = gzip.compress(data, mtime=0)
        bad = bad[:len(bad) * 2 // 3]
    with open(os.path.join(scratch, "bad.tar"), "wb") as f:
        f.write(bad)
    layout = os.path.join(scratch, "layout")
    if kind == "truncated-gzip":  # write_image itself refuses to describe a broken gzip layer
        with pytest.raises(ImageError, match="corrupt gzip layer"):
            write_image(layout, [os.path.join(scratch, "bad.tar")], {})
        write_image(layout, [layer_dirs[0]], {})  # then swap in the broken blob, digests right
        _, manifest = _index_manifest(layout)
        good = manifest["layers"][0]
        digest = "sha256:" + hashlib.sha256(bad).hexdigest()
        with open(_blob(layout, digest), "wb") as f:
            f.write(bad)
        _rewrite_manifest(layout, lambda m: m["layers"][0].update(
            digest=digest, size=len(bad), mediaType=good["mediaType"] + "+gzip"))
        expected = "corrupt gzip data"
    else:
        write_image(layout, [os.path.join(scratch, "bad.tar")], {})
        expected = "corrupt tar"
    image = open_image(layout)
    cache = os.path.join(scratch, "cache")
    with pytest.raises(ImageError, match=f"layer {image.layers[0].digest}: {expected}"):
        layer_image(image.layers[0], cache)
    assert os.listdir(cache) == []
