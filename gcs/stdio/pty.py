"""Pseudo-terminals for processes started with a console."""
from __future__ import annotations

import fcntl
import os
import struct
import termios


def open_pty() -> tuple[int, int, str]:
    """A new pty: (non-blocking master fd, slave fd, slave path); the slave is root-owned, 0600.

    Keep the slave fd open until the child has opened the path itself: a pty whose slave
    side was never reopened reads as hung up.
    """
    master, slave = os.openpty()
    try:
        path = os.ttyname(slave)
        os.chown(path, 0, 0)
        os.chmod(path, 0o600)
        os.set_blocking(master, False)
    except OSError:
        os.close(master)
        os.close(slave)
        raise
    return master, slave, path


def set_window_size(master: int, rows: int, cols: int) -> None:
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def get_window_size(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return rows, cols
