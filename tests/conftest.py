import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from gcs.host.launcher import LocalUvm  # noqa: E402

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="local mode needs root (namespaces, mounts)")


def _start(tmp_path, **kw) -> LocalUvm:
    uvm = LocalUvm(str(tmp_path / "uvm"), **kw)
    uvm.start()
    return uvm


def _finish(uvm: LocalUvm) -> None:
    bridge = uvm.bridge
    violations = list(bridge.violations) if bridge is not None else []
    pid = uvm.proc.pid if uvm.proc is not None else None
    uvm.stop()
    if pid is not None:
        assert not os.path.exists(f"/proc/{pid}/status") or _is_zombie(pid) is False
    assert violations == [], f"the agent broke host invariants: {violations}"


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("State:\tZ") for line in f)
    except FileNotFoundError:
        return False


@pytest.fixture
def uvm(tmp_path):
    """A local-mode agent over the hybrid transport, negotiated."""
    u = _start(tmp_path)
    try:
        yield u
    finally:
        _finish(u)


@pytest.fixture
def uvm_stdio(tmp_path):
    """A local-mode agent whose bridge runs over its stdin/stdout."""
    u = _start(tmp_path, bridge_stdio=True)
    try:
        yield u
    finally:
        _finish(u)


def read_log(u: LocalUvm) -> str:
    with open(u.log_path) as f:
        return f.read()


def installed_gcsctl() -> str:
    """The `gcsctl` console script that set-up (`pip install -e .`) put beside this
    interpreter: what a user runs, tested as such."""
    path = os.path.join(os.path.dirname(sys.executable), "gcsctl")
    if not os.access(path, os.X_OK):
        pytest.fail(f"gcsctl is not installed beside {sys.executable}: run the tests with the venv's "
                    "interpreter (`make test`, or .venv/bin/python -m pytest)")
    return path


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH (the Makefile exports one), no
    GCSCTL_UVM, a terminal width the help text is compared at."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP", "GCSCTL_UVM")}
    env.update(COLUMNS="100", **extra)
    return env
