"""Container images on the host, without a registry or network: an OCI image layout (a
directory, or packed as a tar as newer `docker save` writes it) or a classic `docker save`
tarball; and a writer for tests and demos.

Every blob is read front to back through a sha256 check that fires when it ends, so a blob
that does not match its digest is an error however it is read.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from typing import IO, Any

try:
    import zstandard  # optional: only zstd layers need it
except ImportError:  # pragma: no cover - depends on the machine
    zstandard = None

PLATFORM = ("linux", "amd64")  # what a UVM runs
MTIME = 0  # write_image: the same tree always gives the same bytes

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
INDEXES = (OCI_INDEX, DOCKER_LIST)
MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
CONFIGS = (OCI_CONFIG, DOCKER_CONFIG)
LAYER_TYPES = {
    OCI_LAYER: "tar", OCI_LAYER + "+gzip": "gzip", OCI_LAYER + "+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    DOCKER_LAYER: "tar", DOCKER_LAYER + ".gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
REF_KEYS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")


class ImageError(Exception):
    """Anything wrong with an image, said so that a user can act on it."""


# -- where blobs come from ------------------------------------------------------------------

class _Dir:
    """An image laid out in a directory."""

    def __init__(self, root: str) -> None:
        self.where = root

    def has(self, name: str) -> bool:
        return os.path.isfile(os.path.join(self.where, name))

    def open(self, name: str) -> IO[bytes]:
        try:
            return open(os.path.join(self.where, name), "rb")
        except FileNotFoundError:
            raise ImageError(f"{self.where}: {name} is missing") from None
        except OSError as e:
            raise ImageError(f"{self.where}: cannot read {name}: {e.strerror}") from None


class _Tar:
    """An image packed in a tar archive, read in place: one scan of the headers, then each
    member is read from its offset (a compressed archive is decompressed as it is read)."""

    def __init__(self, path: str) -> None:
        self.where = path
        try:
            with tarfile.open(path, "r:*") as tar:
                self.members = {_clean(m.name): m for m in tar.getmembers()}
        except tarfile.ReadError:
            raise ImageError(f"{path}: not an image: neither an OCI layout directory nor a docker save "
                             "tarball (not a tar archive)") from None
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise ImageError(f"{path}: not an image: cannot read it as a tar archive ({e})") from None

    def _member(self, name: str, hops: int = 0) -> tarfile.TarInfo:
        m = self.members.get(name)
        if m is None:
            raise ImageError(f"{self.where}: {name} is missing from the archive")
        if (m.issym() or m.islnk()) and hops < 8:  # docker save links identical layers
            target = m.linkname if m.islnk() else posixpath.join(posixpath.dirname(name), m.linkname)
            return self._member(_clean(target), hops + 1)
        if not m.isreg():
            raise ImageError(f"{self.where}: {name} in the archive is not a file")
        return m

    def has(self, name: str) -> bool:
        try:
            self._member(name)
            return True
        except ImageError:
            return False

    def open(self, name: str) -> IO[bytes]:
        member = self._member(name)
        tar = tarfile.open(self.where, "r:*")
        f = tar.extractfile(member)
        assert f is not None
        return _Closing(f, tar)


class _Closing(io.RawIOBase):
    """A member's stream that closes its archive with it."""

    def __init__(self, f: IO[bytes], tar: tarfile.TarFile) -> None:
        self._f, self._tar = f, tar

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._f.read(len(b))
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._f.close()
            self._tar.close()
        super().close()


_Source = _Dir | _Tar


class _Checked(io.RawIOBase):
    """Passes a blob through, hashing it; at its end the sha256 (and size) must match."""

    def __init__(self, f: IO[bytes], digest: str, size: int | None, label: str) -> None:
        self._f, self._digest, self._size, self._label = f, digest, size, label
        self._hash, self._seen, self._checked = hashlib.sha256(), 0, False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._f.read(len(b))
        if data:
            self._hash.update(data)
            self._seen += len(data)
            if self._size is not None and self._seen > self._size:
                raise ImageError(f"{self._label}: longer than the {self._size} bytes its descriptor says")
            b[:len(data)] = data
            return len(data)
        if not self._checked:
            self._checked = True
            actual = "sha256:" + self._hash.hexdigest()
            if actual != self._digest:
                raise ImageError(f"{self._label}: content does not match its digest (it hashes to {actual}); "
                                 "the image is corrupt or was altered")
            if self._size is not None and self._seen != self._size:
                raise ImageError(f"{self._label}: {self._seen} bytes, its descriptor says {self._size}")
        return 0

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


class _LayerStream(io.RawIOBase):
    """A layer's uncompressed tar; decompression errors become ImageErrors naming the layer."""

    def __init__(self, inner: IO[bytes], closers: list[IO[bytes]], label: str, compression: str) -> None:
        self._inner, self._closers, self._label, self._compression = inner, closers, label, compression

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            data = self._inner.read(len(b))
        except ImageError:
            raise
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            if self._compression == "tar":
                raise ImageError(f"{self._label}: cannot read it ({e})") from None
            raise ImageError(f"{self._label}: corrupt {self._compression} data ({e})") from None
        except Exception as e:  # zstandard.ZstdError
            if zstandard is not None and isinstance(e, zstandard.ZstdError):
                raise ImageError(f"{self._label}: corrupt zstd data ({e})") from None
            raise
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            for f in self._closers:
                f.close()
        super().close()


# -- the image model ------------------------------------------------------------------------

@dataclass
class Layer:
    digest: str        # sha256 of the blob as stored (for docker save: of the layer tar)
    media_type: str
    compression: str   # "tar", "gzip" or "zstd"
    size: int          # bytes of the blob
    diff_id: str = ""  # sha256 of the uncompressed tar, from the image config
    _source: _Source | None = field(default=None, repr=False, compare=False)
    _name: str = field(default="", repr=False, compare=False)

    def open(self) -> IO[bytes]:
        """The layer as an uncompressed tar stream. Read it to its end: the digest is checked
        there (a mismatch raises ImageError)."""
        label = f"layer {self.digest}"
        if self.compression == "zstd" and zstandard is None:
            raise ImageError(f"{label} is zstd-compressed and the Python module zstandard is not "
                             "installed (pip install zstandard, or Debian's python3-zstandard)")
        assert self._source is not None
        raw = _Checked(self._source.open(self._name), self.digest, self.size if self.size >= 0 else None,
                       f"{label} ({self._name})")
        closers: list[IO[bytes]] = [raw]
        if self.compression == "gzip":
            inner: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb")
        elif self.compression == "zstd":
            inner = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        else:
            inner = raw
        if inner is not raw:
            closers.insert(0, inner)
            if self.diff_id:  # the config's word on the uncompressed content
                inner = _Checked(inner, self.diff_id, None, f"{label}: uncompressed content (diff_id {self.diff_id})")
        return io.BufferedReader(_LayerStream(inner, closers, label, self.compression), 1 << 16)


@dataclass
class ImageConfig:
    env: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    working_dir: str = ""
    user: str = ""

    @classmethod
    def from_json(cls, doc: dict, label: str = "image config") -> ImageConfig:
        """From an image config document (its "config" object holds what a process needs)."""
        cfg = doc.get("config") or {}
        if not isinstance(cfg, dict):
            raise ImageError(f"{label}: \"config\" is not an object")

        def strs(key: str) -> list[str]:
            value = cfg.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ImageError(f"{label}: {key} is not a list of strings")
            return list(value)

        def text(key: str) -> str:
            value = cfg.get(key) or ""
            if not isinstance(value, str):
                raise ImageError(f"{label}: {key} is not a string")
            return value

        return cls(strs("Env"), strs("Entrypoint"), strs("Cmd"), text("WorkingDir"), text("User"))


@dataclass
class Image:
    layers: list[Layer]  # bottom first
    config: ImageConfig
    ref: str


def process_args(config: ImageConfig, argv_override: list[str]) -> list[str]:
    """docker run semantics: the arguments replace Cmd, the Entrypoint stays in front."""
    args = config.entrypoint + (list(argv_override) if argv_override else config.cmd)
    if not args:
        raise ImageError("the image has neither Entrypoint nor Cmd: give the command to run")
    return args


# -- reading --------------------------------------------------------------------------------

def open_image(path: str, ref: str | None = None) -> Image:
    """An image from an OCI layout directory, a docker save tarball or an OCI layout in a tar.
    `ref` picks one image when the index or manifest.json holds several."""
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such file or directory")
    source: _Source = _Dir(path) if os.path.isdir(path) else _Tar(path)
    if source.has("index.json"):  # newer docker save writes both; the OCI side has media types
        return _open_oci(source, ref)
    if source.has("manifest.json"):
        return _open_docker(source, ref)
    kind = "directory" if isinstance(source, _Dir) else "archive"
    raise ImageError(f"{path}: not an image: the {kind} has neither index.json (OCI image layout) "
                     "nor manifest.json (docker save)")


def _clean(name: str) -> str:
    return posixpath.normpath(name.lstrip("/")) if name not in ("", ".", "./") else "."


def _member_name(name: Any, label: str) -> str:
    """A path manifest.json names: relative and inside the image."""
    if not isinstance(name, str) or not name or name.startswith("/") or ".." in name.split("/"):
        raise ImageError(f"{label}: bad path {name!r} (must be relative, inside the image)")
    return _clean(name)


def _blob_name(digest: Any, label: str) -> str:
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise ImageError(f"{label}: unsupported or malformed digest {digest!r} (expected sha256:<64 hex>)")
    return "blobs/sha256/" + digest[7:]


def _read(source: _Source, name: str, digest: str | None, size: int | None, label: str) -> bytes:
    f = source.open(name)
    if digest is None:
        with f:
            return f.read()
    with _Checked(f, digest, size, label) as checked:
        return checked.read()


def _json(data: bytes, label: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as e:
        raise ImageError(f"{label}: not valid JSON ({e})") from None


def _descriptor_blob(source: _Source, desc: Any, label: str) -> tuple[str, bytes]:
    if not isinstance(desc, dict):
        raise ImageError(f"{label}: a descriptor is not an object")
    digest = desc.get("digest")
    name = _blob_name(digest, label)
    size = desc.get("size") if isinstance(desc.get("size"), int) else None
    return digest, _read(source, name, digest, size, f"{source.where}: blob {digest}")


def _refs(desc: dict) -> list[str]:
    annotations = desc.get("annotations") or {}
    return [annotations[k] for k in REF_KEYS if isinstance(annotations.get(k), str)]


def _platform(desc: dict) -> tuple[str, str]:
    p = desc.get("platform") or {}
    return p.get("os", ""), p.get("architecture", "")


def _choose(entries: Any, label: str, ref: str | None) -> dict:
    """One image of an index: by ref, the only one, or the linux/amd64 one."""
    if not isinstance(entries, list) or not entries:
        raise ImageError(f"{label}: lists no images")
    if ref is not None:
        named = [d for d in entries if isinstance(d, dict) and ref in _refs(d)]
        if not named:
            known = sorted({r for d in entries if isinstance(d, dict) for r in _refs(d)})
            raise ImageError(f"{label}: no image named {ref!r} (it holds: {', '.join(known) or 'unnamed images'})")
        entries = named
    if len(entries) == 1:
        return entries[0]
    real = [d for d in entries if isinstance(d, dict) and _platform(d) != ("unknown", "unknown")]  # not attestations
    ours = [d for d in real if _platform(d) == PLATFORM]
    if len(ours) == 1:
        return ours[0]
    if len(real) == 1:
        return real[0]
    seen = ", ".join(sorted({"/".join(_platform(d)) or "?" for d in real} | {r for d in real for r in _refs(d)}))
    raise ImageError(f"{label}: holds {len(entries)} images and no single linux/amd64 one ({seen}); name one")


def _open_oci(source: _Source, ref: str | None) -> Image:
    where = source.where
    index = _json(_read(source, "index.json", None, None, f"{where}: index.json"), f"{where}: index.json")
    if not isinstance(index, dict):
        raise ImageError(f"{where}: index.json is not an object")
    chosen = _choose(index.get("manifests"), f"{where}: index.json", ref)
    image_ref = (_refs(chosen) or [""])[0]
    if not image_ref and source.has("manifest.json"):  # docker save: the tag is there
        entries = _json(_read(source, "manifest.json", None, None, where), f"{where}: manifest.json")
        first = entries[0] if isinstance(entries, list) and entries and isinstance(entries[0], dict) else {}
        tags = first.get("RepoTags") or []
        image_ref = tags[0] if isinstance(tags, list) and tags and isinstance(tags[0], str) else ""
    desc = chosen
    for _ in range(4):  # an index may name an index (multi-platform image)
        digest, data = _descriptor_blob(source, desc, f"{where}: index.json")
        doc = _json(data, f"{where}: blob {digest}")
        if not isinstance(doc, dict):
            raise ImageError(f"{where}: blob {digest} is not a JSON object")
        kind = desc.get("mediaType") or doc.get("mediaType") or ("index" if "manifests" in doc else "manifest")
        if kind in INDEXES or kind == "index":
            desc = _choose(doc.get("manifests"), f"{where}: index {digest}", None)
            continue
        if kind not in MANIFESTS and kind != "manifest":
            raise ImageError(f"{where}: blob {digest} has media type {kind}, not an image manifest")
        return _from_manifest(source, doc, digest, image_ref)
    raise ImageError(f"{where}: indexes nested too deep")


def _from_manifest(source: _Source, manifest: dict, digest: str, ref: str) -> Image:
    where, label = source.where, f"{source.where}: manifest {digest}"
    config_desc = manifest.get("config")
    if not isinstance(config_desc, dict):
        raise ImageError(f"{label}: has no config")
    if config_desc.get("mediaType") not in CONFIGS:
        raise ImageError(f"{label}: config media type {config_desc.get('mediaType')!r} is not a container image's")
    _, data = _descriptor_blob(source, config_desc, label)
    doc = _json(data, f"{where}: config {config_desc.get('digest')}")
    diff_ids = _diff_ids(doc, f"{where}: config {config_desc.get('digest')}")
    descs = manifest.get("layers")
    if not isinstance(descs, list):
        raise ImageError(f"{label}: has no layer list")
    if diff_ids and len(diff_ids) != len(descs):
        raise ImageError(f"{label}: {len(descs)} layers but the config has {len(diff_ids)} diff_ids")
    layers = []
    for i, d in enumerate(descs):
        if not isinstance(d, dict):
            raise ImageError(f"{label}: layer {i} is not a descriptor")
        name = _blob_name(d.get("digest"), label)
        media = d.get("mediaType", "")
        if media not in LAYER_TYPES:
            raise ImageError(f"{label}: layer {d['digest']} has media type {media!r}, which is not a known "
                             f"layer type ({', '.join(sorted(LAYER_TYPES))})")
        size = d.get("size") if isinstance(d.get("size"), int) else -1
        layers.append(_layer(source, name, d["digest"], media, LAYER_TYPES[media], size,
                             diff_ids[i] if diff_ids else "", label))
    return Image(layers, ImageConfig.from_json(doc, f"{where}: config"), ref)


def _diff_ids(doc: Any, label: str) -> list[str]:
    if not isinstance(doc, dict):
        raise ImageError(f"{label}: not a JSON object")
    ids = (doc.get("rootfs") or {}).get("diff_ids") or []
    if not isinstance(ids, list) or not all(isinstance(i, str) and DIGEST.fullmatch(i) for i in ids):
        raise ImageError(f"{label}: rootfs.diff_ids is not a list of sha256 digests")
    return ids


def _layer(source: _Source, name: str, digest: str, media: str, compression: str, size: int,
           diff_id: str, label: str) -> Layer:
    if compression == "tar" and diff_id and diff_id != digest:  # the same bytes: the same hash
        raise ImageError(f"{label}: uncompressed layer {digest} but the config says its diff_id is {diff_id}")
    return Layer(digest, media, compression, size, diff_id, source, name)


def _sniff(source: _Source, name: str) -> str:
    with source.open(name) as f:
        magic = f.read(4)
    return "gzip" if magic[:2] == b"\x1f\x8b" else "zstd" if magic == b"\x28\xb5\x2f\xfd" else "tar"


def _open_docker(source: _Source, ref: str | None) -> Image:
    where = source.where
    label = f"{where}: manifest.json"
    entries = _json(_read(source, "manifest.json", None, None, label), label)
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise ImageError(f"{label}: expected a list of images")
    if ref is not None:
        entries = [e for e in entries if ref in (e.get("RepoTags") or [])]
        if not entries:
            raise ImageError(f"{label}: no image tagged {ref!r}")
    if len(entries) > 1:
        tags = [t for e in entries for t in (e.get("RepoTags") or [])]
        raise ImageError(f"{label}: holds {len(entries)} images ({', '.join(tags) or 'untagged'}); name one")
    entry = entries[0]
    config_name = _member_name(entry.get("Config"), label)
    m = re.search(r"([0-9a-f]{64})(\.json)?$", config_name)  # the config's name is its sha256
    config_digest = "sha256:" + m.group(1) if m else None
    doc = _json(_read(source, config_name, config_digest, None, f"{where}: config {config_name}"),
                f"{where}: {config_name}")
    diff_ids = _diff_ids(doc, f"{where}: {config_name}")
    names = entry.get("Layers")
    if not isinstance(names, list):
        raise ImageError(f"{label}: has no Layers list")
    if len(diff_ids) != len(names):
        raise ImageError(f"{label}: {len(names)} layers but the config has {len(diff_ids)} diff_ids")
    tags = entry.get("RepoTags") or []
    layers = []
    for name, diff_id in zip(names, diff_ids):
        name = _member_name(name, label)
        compression = _sniff(source, name)
        m = re.fullmatch(r"blobs/sha256/([0-9a-f]{64})", name)
        if m:
            digest = "sha256:" + m.group(1)
        elif compression == "tar":
            digest = diff_id  # docker save's layer.tar: the diff_id is its sha256
        else:  # a compressed layer under an arbitrary name: hash it once
            with source.open(name) as f:
                digest = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
        media = DOCKER_LAYER + {"tar": "", "gzip": ".gzip", "zstd": "+zstd"}[compression]
        size = source._member(name).size if isinstance(source, _Tar) else os.path.getsize(os.path.join(where, name))
        layers.append(_layer(source, name, digest, media, compression, size, diff_id, label))
    return Image(layers, ImageConfig.from_json(doc, f"{where}: config"), tags[0] if tags else "")


# -- writing (tests, demos) -----------------------------------------------------------------

def _tar_tree(src: str, out: IO[bytes]) -> None:
    """A layer tar of a directory: sorted, mtime fixed, owners and modes kept, xattrs as PAX
    SCHILY.xattr records, hard links as links (the first name carries the data)."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(rel: str) -> None:
            path = os.path.join(src, rel)
            info = tar.gettarinfo(path, arcname=rel)
            if info is None:  # a socket: tar cannot hold it
                return
            info.mtime, info.uname, info.gname = MTIME, "", ""
            try:
                xattrs = sorted(os.listxattr(path, follow_symlinks=False))
            except OSError:  # a filesystem without xattrs
                xattrs = []
            for name in xattrs:
                value = os.getxattr(path, name, follow_symlinks=False)
                info.pax_headers["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
            if info.isdir():
                for name in sorted(os.listdir(path)):
                    add(posixpath.join(rel, name) if rel else name)

        for name in sorted(os.listdir(src)):
            add(name)


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def _layer_blob(src: str, tmpdir: str) -> tuple[str, str, str, str]:
    """(path, digest, diff_id, media type) of a layer from a directory, or from a tar file
    taken as it is (plain or gzip; so tests can hand in broken ones)."""
    if os.path.isdir(src):
        fd, path = tempfile.mkstemp(dir=tmpdir, suffix=".tar")
        with os.fdopen(fd, "wb") as f:
            _tar_tree(src, f)
        digest = _sha256(path)
        return path, digest, digest, OCI_LAYER
    if not os.path.isfile(src):
        raise ImageError(f"{src}: a layer must be a directory or a tar file")
    digest = _sha256(src)
    with open(src, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            return src, digest, digest, OCI_LAYER
    try:
        with gzip.open(src, "rb") as f:
            diff_id = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    except (OSError, EOFError, zlib.error) as e:
        raise ImageError(f"{src}: corrupt gzip layer ({e})") from None
    return src, digest, diff_id, OCI_LAYER + "+gzip"


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def write_image(dest: str, layers: list[str], config: dict, ref: str = "pygcs/test:latest",
                fmt: str = "oci") -> None:
    """Write an image of `layers` (directories, bottom first; a tar file is taken as it is) and
    `config` (the image config's "config" object: Env, Entrypoint, Cmd, WorkingDir, User; or a
    whole image config), as an OCI layout directory (fmt="oci") or a docker save tarball
    (fmt="docker") at dest."""
    if fmt not in ("oci", "docker"):
        raise ValueError(f"fmt must be 'oci' or 'docker', not {fmt!r}")
    with tempfile.TemporaryDirectory(prefix="write-image-") as tmp:
        blobs = [_layer_blob(src, tmp) for src in layers]
        doc = dict(config) if "config" in config or "rootfs" in config else {"config": dict(config)}
        doc.setdefault("architecture", PLATFORM[1])
        doc.setdefault("os", PLATFORM[0])
        doc["rootfs"] = {"type": "layers", "diff_ids": [b[2] for b in blobs]}
        config_bytes = _dumps(doc)
        config_hex = hashlib.sha256(config_bytes).hexdigest()
        if fmt == "docker":
            _write_docker(dest, blobs, config_bytes, config_hex, ref)
        else:
            _write_oci(dest, blobs, config_bytes, config_hex, ref)


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, path: str | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = MTIME
    if data is None and path is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        return
    info.mode = 0o644
    if path is not None:
        info.size = os.path.getsize(path)
        with open(path, "rb") as f:
            tar.addfile(info, f)
    else:
        info.size = len(data or b"")
        tar.addfile(info, io.BytesIO(data or b""))


def _write_docker(dest: str, blobs: list[tuple[str, str, str, str]], config: bytes, config_hex: str,
                  ref: str) -> None:
    names = []
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for path, digest, _, _ in blobs:
            names.append(f"{digest[7:]}/layer.tar")
            if names[-1] in names[:-1]:
                continue
            _add(tar, digest[7:])
            _add(tar, f"{digest[7:]}/VERSION", b"1.0")
            _add(tar, names[-1], path=path)
        _add(tar, f"{config_hex}.json", config)
        _add(tar, "manifest.json", _dumps([{"Config": f"{config_hex}.json", "RepoTags": [ref], "Layers": names}]))
        repo, _, tag = ref.rpartition(":")
        if repo and "/" not in tag:
            _add(tar, "repositories", _dumps({repo: {tag: names[-1].split("/")[0] if names else config_hex}}))


def _write_oci(dest: str, blobs: list[tuple[str, str, str, str]], config: bytes, config_hex: str,
               ref: str) -> None:
    blob_dir = os.path.join(dest, "blobs", "sha256")
    os.makedirs(blob_dir, exist_ok=True)

    def put(data: bytes) -> str:
        hexd = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blob_dir, hexd), "wb") as f:
            f.write(data)
        return "sha256:" + hexd

    layer_descs = []
    for path, digest, _, media in blobs:
        shutil.copyfile(path, os.path.join(blob_dir, digest[7:]))
        layer_descs.append({"mediaType": media, "digest": digest, "size": os.path.getsize(path)})
    put(config)
    manifest = _dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": OCI_CONFIG, "digest": "sha256:" + config_hex, "size": len(config)},
                       "layers": layer_descs})
    repo, _, tag = ref.rpartition(":")
    annotations = {"io.containerd.image.name": ref,
                   "org.opencontainers.image.ref.name": tag if repo and "/" not in tag else ref}
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
             "manifests": [{"mediaType": OCI_MANIFEST, "digest": put(manifest), "size": len(manifest),
                            "platform": {"architecture": PLATFORM[1], "os": PLATFORM[0]},
                            "annotations": annotations}]}
    with open(os.path.join(dest, "oci-layout"), "wb") as f:
        f.write(_dumps({"imageLayoutVersion": "1.0.0"}))
    with open(os.path.join(dest, "index.json"), "wb") as f:
        f.write(_dumps(index))
