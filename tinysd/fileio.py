"""Reading the files a user names: regular files only.

`open(path)` on a FIFO blocks until a writer appears, and a character device such as /dev/zero
never ends; tinysd reads neither. `open_regular` opens without blocking (O_NONBLOCK), checks with
fstat on the open descriptor that it is a regular file, and refuses anything else with an OSError
(errno EINVAL) whose strerror says what the path is, so that callers' `cannot read (...)` messages
name it.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from .atomic import file_kind


def open_regular(path: str | Path) -> BinaryIO:
    """`open(path, "rb")` for a regular file; OSError(EINVAL) for a FIFO, device, socket or folder."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"{file_kind(mode)}, not a regular file", str(path))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    # From here the file object owns fd: if a signal's exception (SIGTERM, Ctrl-C) lands inside
    # fdopen after the object exists, io.open closes it, and closing fd again here would fail.
    return os.fdopen(fd, "rb")


def read_bytes(path: str | Path) -> bytes:
    """The bytes of a regular file (see `open_regular`)."""
    with open_regular(path) as f:
        return f.read()


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """The text of a regular file (see `open_regular`)."""
    return read_bytes(path).decode(encoding)
