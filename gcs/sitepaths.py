"""Where the agent's dependencies live when Python starts with `-S` (the agent and its
spawner both do: site's .pth processing costs ~20 ms here)."""
from __future__ import annotations

import os
import sys


def add_site_packages() -> None:
    """Started with `python -S` (skips site's .pth processing, ~20 ms here), find our
    dependencies' directories ourselves."""
    if not sys.flags.no_site:
        return
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    # Without site, sys.prefix is the base interpreter's even in a venv: find the venv by
    # its pyvenv.cfg beside bin/, as site would, and put its packages first.
    venv = os.path.dirname(os.path.dirname(sys.executable))
    first = [f"{venv}/lib/{version}/site-packages"] if os.path.exists(f"{venv}/pyvenv.cfg") else []
    for candidate in (*first, f"{sys.prefix}/lib/{version}/site-packages", "/usr/lib/python3/dist-packages",
                      f"/usr/local/lib/{version}/dist-packages"):
        if os.path.isdir(candidate) and candidate not in sys.path:
            sys.path.append(candidate)
