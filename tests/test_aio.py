"""The agent's event loop."""
import os
import signal
import socket
import time

import pytest

from gcs import aio


def run(coro):
    return aio.get_loop().run_until_complete(aio.spawn(coro))


def test_tasks_sleep_and_results():
    order = []

    async def worker(name, delay):
        await aio.sleep(delay)
        order.append(name)
        return name

    async def main():
        tasks = [aio.spawn(worker("b", 0.02)), aio.spawn(worker("a", 0.01))]
        return await aio.gather(*tasks)

    assert run(main()) == ["b", "a"]
    assert order == ["a", "b"]


def test_wait_for_timeout_leaves_shared_future_usable():
    async def main():
        shared = aio.Future()
        with pytest.raises(aio.TimeoutError_):
            await aio.wait_for(shared, 0.01)
        aio.get_loop().call_later(0.01, shared.set_result, 5)
        return await aio.wait_for(shared, 1)

    assert run(main()) == 5


def test_cancel_a_task_waiting_on_a_socket_releases_the_watch():
    a, b = socket.socketpair()
    a.setblocking(False)

    async def reader():
        return await aio.sock_recv(a, 10)

    async def main():
        t = aio.spawn(reader())
        await aio.sleep(0.01)
        t.cancel()
        await aio.sleep(0.01)
        assert t.cancelled()
        assert a.fileno() not in aio.get_loop()._readers
        t2 = aio.spawn(reader())
        b.send(b"hi")
        return await t2

    try:
        assert run(main()) == b"hi"
    finally:
        a.close()
        b.close()


def test_exceptions_propagate_to_awaiters():
    async def bad():
        await aio.sleep(0)
        raise ValueError("x")

    async def main():
        with pytest.raises(ValueError):
            await aio.spawn(bad())
        return "ok"

    assert run(main()) == "ok"


def test_signals_arrive_through_the_loop():
    got = []
    loop = aio.get_loop()
    old = signal.getsignal(signal.SIGUSR2)
    loop.add_signal_handler(signal.SIGUSR2, got.append)
    try:
        async def main():
            os.kill(os.getpid(), signal.SIGUSR2)
            for _ in range(100):
                if got:
                    return got
                await aio.sleep(0.005)
        assert run(main()) == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, old)


def test_event_and_queue():
    async def main():
        ev, q = aio.Event(), aio.Queue()
        waiter = aio.spawn(ev.wait())
        getter = aio.spawn(q.get())
        await aio.sleep(0)
        q.put(1)
        ev.set()
        await waiter
        return await getter

    assert run(main()) == 1


def test_timers_do_not_spin():
    async def main():
        t0 = time.monotonic()
        await aio.sleep(0.05)
        return time.monotonic() - t0

    t_cpu = time.process_time()
    elapsed = run(main())
    assert elapsed >= 0.05
    assert time.process_time() - t_cpu < 0.04


def test_wait_for_timeout_cancels_the_coroutine_it_wrapped():
    state = {"finished": False, "cancelled": False}

    async def slow():
        try:
            await aio.sleep(0.2)
            state["finished"] = True
        except aio.Cancelled:
            state["cancelled"] = True
            raise

    async def main():
        before = len(aio.get_loop().tasks)
        with pytest.raises(aio.TimeoutError_):
            await aio.wait_for(slow(), 0.01)
        await aio.sleep(0.01)
        return len(aio.get_loop().tasks) - before

    assert run(main()) == 0
    assert state == {"finished": False, "cancelled": True}


def test_cancelling_a_waiter_of_wait_for_cancels_the_wrapped_coroutine():
    state = {}

    async def slow():
        try:
            await aio.sleep(5)
        except aio.Cancelled:
            state["inner"] = "cancelled"
            raise

    async def main():
        outer = aio.spawn(aio.wait_for(slow(), 10))
        await aio.sleep(0.01)
        outer.cancel()
        await aio.sleep(0.01)
        return outer.cancelled()

    assert run(main()) is True
    assert state == {"inner": "cancelled"}


def test_cancel_after_the_awaited_future_resolved_keeps_the_result():
    # A Queue item handed to a getter whose task is then cancelled, before it ran, is not lost.
    queue = aio.Queue()
    got = []

    async def getter():
        got.append(await queue.get())
        await aio.sleep(1)  # the cancel lands here

    async def main():
        task = aio.spawn(getter())
        await aio.sleep(0.01)
        queue.put("item")  # resolves the getter's future; its wakeup is queued
        task.cancel()
        await aio.sleep(0.01)
        return task.cancelled()

    assert run(main()) is True
    assert got == ["item"]


def test_a_task_that_cancels_itself_is_cancelled_at_its_next_await():
    async def selfish():
        aio.Task.cancel(me[0])
        await aio.sleep(1)
        return "not cancelled"

    me = []

    async def main():
        me.append(aio.spawn(selfish()))
        await aio.sleep(0.05)
        return me[0].cancelled()

    assert run(main()) is True


def test_run_in_thread_keeps_the_loop_serving():
    import threading

    async def main():
        ticks = []

        async def ticker():
            for _ in range(10):
                await aio.sleep(0.01)
                ticks.append(time.monotonic())

        t = aio.spawn(ticker())
        started = time.monotonic()
        ident = await aio.run_in_thread(lambda: (time.sleep(0.2), threading.get_ident())[1])
        await t
        return started, ticks, ident

    started, ticks, ident = run(main())
    assert ident != threading.get_ident()
    assert len(ticks) == 10 and ticks[-1] - started < 0.19  # ticked while the call blocked


def test_run_in_thread_passes_exceptions_and_runs_calls_concurrently():
    def boom():
        raise PermissionError(13, "nope")

    async def main():
        with pytest.raises(PermissionError):
            await aio.run_in_thread(boom)
        started = time.monotonic()
        results = await aio.gather(*[aio.run_in_thread(time.sleep, 0.1) for _ in range(4)])
        return results, time.monotonic() - started

    results, elapsed = run(main())
    assert results == [None] * 4
    assert elapsed < 0.35  # four workers, not one after the other


def test_waits_that_end_before_their_long_timeout_leave_nothing_behind():
    """A wait bounded by a long timeout (60 s setup bounds) that ends early: the timer lets
    go of its future at once, and cancelled timers do not pile up in the heap (they did:
    two per container, each holding a future, for 60 s)."""
    import gc

    loop = aio.get_loop()
    before = len(loop._timers)

    def futures():
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, aio.Future))

    async def one():
        fut = aio.Future()
        loop.call_soon(fut.set_result, 7)
        return await aio.wait_for(fut, 60.0)

    async def main():
        return [await one() for _ in range(1000)]

    held = futures()
    assert run(main()) == [7] * 1000
    assert futures() - held < 10  # not one per wait
    assert len(loop._timers) - before < 130  # compacted once cancelled ones are most of it
    timer = loop.call_later(0.0, lambda: None)  # one that ran, cancelled afterwards: not counted

    async def nap():
        await aio.sleep(0.01)

    run(nap())
    timer.cancel()
    assert loop._cancelled_timers <= len(loop._timers)


def test_a_worker_that_imports_threading_does_not_hold_up_exit():
    """threading, first imported in a worker (pyroute2 is, by the first Network Add), took
    that worker for the main thread, and the interpreter's exit waited for it: up to 30 s,
    and a local-mode supervisor stopping the agent gave up first and left its cgroups."""
    import subprocess
    import sys

    code = ("import sys, time; from gcs import aio\n"
            "async def main():\n"
            "    await aio.run_in_thread(lambda: __import__('threading'))\n"
            "aio.get_loop().run_until_complete(aio.spawn(main()))\n"
            "print('threading' in sys.modules, flush=True)\n")
    t = time.monotonic()
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr
    assert time.monotonic() - t < 10  # not the workers' 30 s idle time
