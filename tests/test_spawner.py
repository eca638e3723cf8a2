"""The native runtime's spawner, driven by the agent's end of it (runtime.Spawner), in a
separate interpreter: its reaper waits for any child, which must not touch pytest's."""
import subprocess
import sys
import textwrap

from gcs.host.launcher import agent_env

SCRIPT = textwrap.dedent('''
    import os, signal, sys, time
    from gcs import aio
    from gcs.protocol import hresult as hr
    from gcs.runtime.reaper import Reaper
    from gcs.containers.native.runtime import NativeRuntime

    loop = aio.get_loop()
    runtime = NativeRuntime(Reaper(loop))
    spawner = runtime.spawner

    async def until(check, timeout=10):
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, "timed out"
            await aio.sleep(0.01)

    async def bad_request():
        try:
            await spawner.spawn("no-such-op", {"namespaces": []}, {}, {}, None)
        except hr.GcsError as err:
            return err
        raise AssertionError("the spawner accepted an unknown op")

    async def main():
        runtime.prestart()                      # as a UVM does after negotiation
        await until(lambda: spawner.sock is not None and not spawner.lock.locked())
        first = spawner.pid
        print("started", first, os.path.exists(f"/proc/{first}"))
        err = await bad_request()               # answered with an error; the spawner goes on
        print("error", hex(err.hresult), "KeyError" in str(err), spawner.pid == first)
        os.kill(first, signal.SIGKILL)          # dies between requests
        await until(lambda: spawner.sock is None)
        err = await bad_request()               # a new spawner answers
        print("restarted", spawner.pid != first, "KeyError" in str(err))
        runtime.teardown()
        print("stopped", spawner.sock is None, not os.path.exists(f"/proc/{spawner.pid}"))

    loop.run_until_complete(aio.spawn(main()))
''')


def test_spawner_starts_answers_restarts_and_stops():
    out = subprocess.run([sys.executable, "-S", "-c", "from gcs.sitepaths import add_site_packages; "
                          "add_site_packages(); exec(" + repr(SCRIPT) + ")"],
                         env=agent_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0].startswith("started") and lines[0].endswith("True")
    assert lines[1] == "error 0x80004005 True True"
    assert lines[2] == "restarted True True"
    assert lines[3] == "stopped True True"


def test_a_container_process_silent_during_setup_fails_the_request_in_bounded_time(monkeypatch):
    """The native runtime's wait for a container process's setup report is bounded: a
    process that never reports (a mount that hangs, say) fails its request."""
    import os
    import time

    import pytest

    from gcs import aio
    from gcs.containers.native import runtime
    from gcs.protocol import hresult as hr

    monkeypatch.setattr(runtime, "SETUP_TIMEOUT", 0.2)
    r, w = os.pipe2(os.O_CLOEXEC)  # the write end stays open and silent: a hung setup
    try:
        async def main():
            started = time.monotonic()
            with pytest.raises(hr.GcsError) as info:
                await runtime._read_all(r, stop_at=b"R")
            return time.monotonic() - started, str(info.value)

        elapsed, message = aio.get_loop().run_until_complete(aio.spawn(main()))
    finally:
        os.close(r)
        os.close(w)
    assert elapsed < 2 and "did not finish setting up" in message
