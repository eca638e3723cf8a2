"""Blocking storage calls run on aio's worker threads, never on the event loop.

A mount waits for its device (or, for 9p, for the host's server), an unmount writes back
dirty data, the SCSI `delete` node waits for the disk to go: none of them has a
non-blocking form, and on the loop any of them would stall every other request. A call
whose caller stops waiting (a bound ran out, or its task was cancelled) still runs to its
end on the worker; `undo` then reverses whatever it did, so nothing is left behind.
"""
from __future__ import annotations

from gcs import aio
from gcs.log import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Awaitable, Callable

    Undo = Callable[[Any], Awaitable[None]]


async def call(fn: Callable[..., Any], *args: Any, undo: Undo | None = None) -> Any:
    """fn(*args) on a worker thread; if the awaiting task is cancelled before fn ends,
    `undo(result)` runs once fn has succeeded after all."""
    fut = aio.run_in_thread(fn, *args)
    try:
        return await fut
    except BaseException:
        abandon(fut, getattr(fn, "__name__", "call"), undo)  # fn's own failure leaves nothing to undo
        raise


async def settled(fut: aio.Future, timeout: float) -> bool:
    """Wait up to timeout for fut; True if it ended (successfully or not)."""
    try:
        await aio.wait_for(fut, timeout)
    except aio.TimeoutError_:
        return False
    except Exception:  # noqa: BLE001 - the caller reads the outcome from fut
        pass
    return True


def abandon(fut: aio.Future, what: str, undo: Undo | None = None,
            release: Callable[[], None] | None = None) -> None:
    """The caller no longer waits for fut: when the thread ends, undo a success, then release."""
    if undo is None and release is None:
        return
    aio.spawn(_after(fut, what, undo, release), f"late-{what}")


async def _after(fut: aio.Future, what: str, undo: Undo | None, release: Callable[[], None] | None) -> None:
    try:
        try:
            result = await fut
        except Exception:  # noqa: BLE001 - it failed: there is nothing to undo
            return
        if undo is not None:
            log.warning("a blocking call finished after its request gave up: undoing it", call=what)
            try:
                await undo(result)
            except Exception as err:  # noqa: BLE001 - logged: nobody waits for this any more
                log.warning("undo of a late call failed", call=what, error=str(err))
    finally:
        if release is not None:
            release()
