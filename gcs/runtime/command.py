"""Running a helper program (mkfs, dmsetup...) from the event loop and collecting its output."""
from __future__ import annotations

import os

from gcs import aio
from gcs.protocol import hresult as hr
from gcs.runtime.reaper import Reaper, exit_code
from gcs.runtime.spawn import SpawnSpec, spawn

TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_OUTPUT = 64 * 1024


async def run(reaper: Reaper, argv: list[str], timeout: float = 120.0,
              netns_fd: int | None = None) -> tuple[int, str]:
    """Run argv with stdin from /dev/null (in network namespace `netns_fd` if given); returns
    (exit code, combined output, capped)."""
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    try:
        pid = spawn(SpawnSpec(argv=argv, env={"PATH": TOOL_PATH}, stdio=(None, wfd, wfd), netns_fd=netns_fd))
    except BaseException:
        os.close(rfd)
        raise
    finally:
        os.close(wfd)
    child = reaper.spawned(pid)  # same callback as the spawn
    os.set_blocking(rfd, False)
    chunks: list[bytes] = []
    size = 0

    async def collect() -> None:
        nonlocal size
        while True:
            data = await aio.fd_read(rfd, 65536)
            if not data:
                return
            if size < MAX_OUTPUT:
                chunks.append(data)
                size += len(data)

    collector = aio.spawn(collect(), f"output-{argv[0]}")
    try:
        await aio.wait_for(collector, timeout)
        code = exit_code(await aio.wait_for(child.status, timeout))
    except aio.TimeoutError_:
        child.signal(9)
        raise hr.GcsError(hr.E_FAIL, f"{argv[0]} did not finish within {timeout:.0f}s") from None
    finally:
        collector.cancel()
        aio.get_loop().forget_fd(rfd)
        os.close(rfd)
    return code, b"".join(chunks).decode("utf-8", "replace")


async def check(reaper: Reaper, argv: list[str], timeout: float = 120.0) -> str:
    code, output = await run(reaper, argv, timeout)
    if code != 0:
        raise hr.GcsError(hr.E_FAIL, f"{' '.join(argv[:2])} failed with exit code {code}: {output.strip()[-500:]}")
    return output
