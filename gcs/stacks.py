"""DumpStacks: every thread's stack and every task's await chain, plus a state summary."""
from __future__ import annotations

import os
import sys
import threading
import traceback

from gcs import aio


def _task_stack(task: aio.Task) -> list[str]:
    lines: list[str] = []
    coro = task.coro
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            lines.append(f'  File "{frame.f_code.co_filename}", line {frame.f_lineno}, in {frame.f_code.co_name}')
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        if isinstance(coro, aio.Future):
            lines.append(f"  awaiting {type(coro).__name__}")
            break
    return lines


def dump_stacks(state: dict[str, object]) -> str:
    out = [f"gcs pid {os.getpid()}"]
    out += [f"{key}: {value}" for key, value in state.items()]
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        out.append(f"\nthread {names.get(ident, ident)}:")
        out.extend(line.rstrip("\n") for line in traceback.format_stack(frame))
    tasks = sorted(aio.get_loop().tasks, key=lambda t: t.name)
    out.append(f"\n{len(tasks)} tasks:")
    for task in tasks:
        out.append(f"task {task.name}:")
        out.extend(_task_stack(task))
    return "\n".join(out) + "\n"


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd")) - 1  # minus the listing's own fd
