"""Starting a program with posix_spawn: vfork-fast, and safe whatever the agent's state.

The agent is single-threaded, so it can also change its own cwd around the spawn (glibc's
posix_spawn has no portable chdir action exposed to Python 3.11).
"""
from __future__ import annotations

import os
from gcs.record import record

import _signal  # not `signal`: its enums cost start-up time under TCG

from gcs.protocol.hresult import E_FAIL, E_INVALIDARG, GcsError

TYPE_CHECKING = False  # typing costs ~45 ms under TCG; annotations are never evaluated
if TYPE_CHECKING:
    from typing import Optional

# Signals Python leaves ignored; ignored dispositions survive exec, so reset them.
_RESET_SIGNALS = {_signal.SIGPIPE, _signal.SIGXFSZ}
_DEVNULL = "/dev/null"


@record
class SpawnSpec:
    argv: list[str]
    env: dict[str, str]
    cwd: Optional[str] = None
    stdio: tuple[Optional[int], Optional[int], Optional[int]] = (None, None, None)  # None: /dev/null
    tty_path: Optional[str] = None  # open this tty as 0/1/2 in a new session (ctty)
    new_session: bool = False
    netns_fd: Optional[int] = None  # born in this network namespace (None: ours)


def spawn(spec: SpawnSpec) -> int:
    if not spec.argv or not spec.argv[0]:
        raise GcsError(E_INVALIDARG, "no command to run: CommandArgs and CommandLine are empty")
    actions: list[tuple] = []
    if spec.tty_path is not None:
        # Opened by a session leader without O_NOCTTY: becomes the controlling terminal.
        actions.append((os.POSIX_SPAWN_OPEN, 0, spec.tty_path, os.O_RDWR, 0))
        actions.append((os.POSIX_SPAWN_DUP2, 0, 1))
        actions.append((os.POSIX_SPAWN_DUP2, 0, 2))
    else:
        for target, fd in enumerate(spec.stdio):
            if fd is None:
                actions.append((os.POSIX_SPAWN_OPEN, target, _DEVNULL, os.O_RDWR, 0))
            else:
                actions.append((os.POSIX_SPAWN_DUP2, fd, target))
    saved_cwd = None
    if spec.cwd:
        saved_cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.chdir(spec.cwd)
        except OSError as err:
            os.close(saved_cwd)
            raise GcsError(E_FAIL, f"working directory {spec.cwd!r}: {err.strerror}") from None
    own_netns = -1
    try:
        if spec.netns_fd is not None:
            # posix_spawn's child shares this thread's namespaces: enter for the spawn alone.
            from gcs import linux
            own_netns = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            linux.setns(spec.netns_fd, linux.CLONE_NEWNET)
        return os.posix_spawnp(
            spec.argv[0], spec.argv, spec.env, file_actions=actions,
            setsid=spec.new_session or spec.tty_path is not None,
            setsigdef=_RESET_SIGNALS, setsigmask=())
    except OSError as err:
        raise GcsError(E_FAIL, f"failed to start {spec.argv[0]!r}: {err.strerror}") from None
    except ValueError as err:  # NUL bytes in argv/env
        raise GcsError(E_INVALIDARG, f"failed to start {spec.argv[0]!r}: {err}") from None
    finally:
        if own_netns >= 0:
            from gcs import linux
            linux.setns(own_netns, linux.CLONE_NEWNET)
            os.close(own_netns)
        if saved_cwd is not None:
            os.fchdir(saved_cwd)
            os.close(saved_cwd)
