"""Atomic file and folder writes: a destination is either untouched or complete.

Files are written to a temporary name in the destination's folder (opened
exclusively, with the umask's permissions), fsynced, then moved over the
destination with os.replace. Folders are built as `.{name}.*.tmp` beside the
destination and renamed into place; an existing destination is only replaced
when the caller allows it, by moving it aside first and deleting it after the
new one is in place (and putting it back if that rename fails). On any error,
KeyboardInterrupt included, the temporary file or folder is removed.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .errors import TinySDError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_file(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(f)` on a temporary file beside `path`, then move it over `path`."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` as UTF-8 to `path`, atomically."""
    return write_file(path, lambda f: f.write(text.encode("utf-8")))


def make_temp_dir(out: Path) -> Path:
    """A new empty folder `.{out.name}.*.tmp` beside `out` (its parent is created if needed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))


def replace_dir(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished folder `tmp` to `out`, with the umask's permissions.

    An existing `out` is refused unless `overwrite`; then it is moved aside,
    replaced, and deleted (or put back if the rename fails).
    """
    mask = _umask()
    for p in (tmp, *tmp.rglob("*")):  # mkdtemp makes 0700
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)
    if not (out.exists() or out.is_symlink()):
        os.rename(tmp, out)
        return
    if not overwrite:
        raise TinySDError(f"{out}: already exists (pass --overwrite to replace it)")
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.replace(out, old / out.name)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old / out.name, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False, what: str = "folder") -> Iterator[Path]:
    """Yield a temporary folder to fill; on normal exit it becomes `out` (see `replace_dir`).

    OSErrors become a one-line TinySDError naming `out` and `what` is being written.
    """
    out = Path(out)
    try:
        tmp = make_temp_dir(out)
    except OSError as e:
        raise TinySDError(f"{out}: cannot write the {what} ({e.strerror or e})") from None
    try:
        yield tmp
        replace_dir(tmp, out, overwrite)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise TinySDError(f"{out}: cannot write the {what} ({e.strerror or e})") from None
        raise
