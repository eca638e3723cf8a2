"""The import direction the layout promises: the protocol core is sans-IO, and storage,
processes and containers never reach up into the bridge, the agent or the entry point.
Every import counts, including those inside functions (loaded lazily, but still a
dependency)."""
import ast
import os

import pytest

from conftest import ROOT

IO_MODULES = {"os", "socket", "_socket", "select", "selectors", "asyncio", "threading", "_thread",
              "subprocess", "io", "fcntl", "signal", "_signal", "mmap", "ctypes"}
UPWARD = ("gcs.bridge", "gcs.agent", "gcs.main")


def imports_of(path):
    tree = ast.parse(open(path).read(), path)
    package = os.path.relpath(os.path.dirname(path), ROOT).replace(os.sep, ".")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                yield f"{base}.{node.module}" if node.module else base
            else:
                yield node.module


def modules_under(*packages):
    for package in packages:
        for dirpath, _, files in os.walk(os.path.join(ROOT, *package.split("."))):
            for name in sorted(files):
                if name.endswith(".py"):
                    yield os.path.join(dirpath, name)


def test_the_protocol_core_imports_no_io():
    found = {(os.path.relpath(path, ROOT), name) for path in modules_under("gcs.protocol")
             for name in imports_of(path)
             if name.split(".")[0] in IO_MODULES or name.startswith(("gcs.", "vmbus."))
             and not name.startswith(("gcs.protocol", "gcs.record"))}
    assert found == set()


@pytest.mark.parametrize("package", ["gcs.storage", "gcs.runtime", "gcs.containers", "gcs.stdio"])
def test_lower_layers_never_import_the_bridge_the_agent_or_main(package):
    found = {(os.path.relpath(path, ROOT), name) for path in modules_under(package)
             for name in imports_of(path) if name.startswith(UPWARD)}
    assert found == set()


def test_the_check_sees_what_it_looks_for(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from gcs.main import x\n    import socket\n")
    assert set(imports_of(str(sample))) == {"gcs.main", "socket"}
