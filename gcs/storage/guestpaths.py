"""Where the host may ask the agent to mount things, and checks that a path stays there."""
from __future__ import annotations

import os

from gcs.protocol import hresult as hr

# Guest paths the host chooses (protocol.md 6.1).
ALLOWED_ROOTS = ("/run/gcs", "/run/layers", "/run/mounts", "/run/drivers")


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path.startswith(root + "/") for root in roots)


def check(path: str, what: str, final_symlink: bool = False) -> str:
    """Validate a host-supplied guest path; returns it normalised.

    Rejected: relative paths, `..` components, NUL bytes, paths outside the allowed roots,
    and paths whose existing part resolves (through symlinks) outside them. With
    `final_symlink` the last component itself may be a symlink (a BlockDev link we made).
    """
    if not path:
        raise hr.GcsError(hr.E_INVALIDARG, f"{what}: empty path")
    if "\0" in path or not path.startswith("/"):
        raise hr.GcsError(hr.E_INVALIDARG, f"{what}: {path!r} is not an absolute path")
    if ".." in path.split("/"):
        raise hr.GcsError(hr.E_INVALIDARG, f"{what}: {path!r} contains '..'")
    norm = os.path.normpath(path)
    if not _under(norm, ALLOWED_ROOTS):
        raise hr.GcsError(hr.E_INVALIDARG,
                          f"{what}: {path!r} is outside the guest paths the host may use ({', '.join(ALLOWED_ROOTS)})")
    real_roots = tuple(os.path.realpath(root) for root in ALLOWED_ROOTS)
    if final_symlink:
        resolved = os.path.join(os.path.realpath(os.path.dirname(norm)), os.path.basename(norm))
    else:
        resolved = os.path.realpath(norm)
    if not (_under(resolved, real_roots) or _under(resolved, ALLOWED_ROOTS)):
        raise hr.GcsError(hr.E_INVALIDARG, f"{what}: {path!r} resolves to {resolved!r}, outside the allowed roots")
    return norm


def is_within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")
