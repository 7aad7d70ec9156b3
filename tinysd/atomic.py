"""Writing without destroying: a destination is either untouched or complete, and tinysd replaces
only what it wrote itself.

Files (`write_file`) are written to a temporary file beside the destination (opened
exclusively, with the umask's permissions, or the mode of the file it replaces), fsynced, then
moved over the destination with os.replace. A symbolic link is written through: the file it
points to is replaced, the link stays. A destination that exists and is not a regular file (a
folder, a device such as /dev/null, a FIFO, a socket) is refused with a TinySDError.

Folders (`atomic_dir`) are built under a temporary name beside the destination and renamed into
place. An existing destination is replaced only when the caller allows it and it is a folder
tinysd wrote (the caller's `is_ours` test; an empty folder is also replaced): it is moved aside,
the new folder renamed in, and the old one deleted (or put back if that rename fails). The current
folder, a folder holding it, and symbolic links are never replaced.

Temporary names start with TEMP_PREFIX (`.tinysd-tmp-{name}.{pid}.{random}`; a folder moved aside
starts with OLD_PREFIX), so a stale one left by a killed process is recognisable, with the id of
the process that made it. On any exception (KeyboardInterrupt and the CLI's SIGTERM included) the
temporary file or folder is removed; only SIGKILL or a power cut can leave one behind.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .errors import TinySDError

TEMP_PREFIX = ".tinysd-tmp-"
OLD_PREFIX = ".tinysd-old-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_kind(mode: int) -> str:
    """'a folder', 'a FIFO', 'a character device', ... for an st_mode."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a file")):
        if test(mode):
            return name
    return "not a regular file"


def output_file(path: str | Path) -> Path:
    """The file that writing `path` replaces: `path`, or for a symbolic link the file it points to.

    TinySDError when that exists and is not a regular file, or its folder does not exist.
    """
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        st = os.stat(target)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as e:
        raise TinySDError(f"{path}: cannot write ({e.strerror or e})") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise TinySDError(f"{path}: is a folder")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise TinySDError(f"{path}: exists and is {file_kind(st.st_mode)}, not a regular file; refusing to replace it")
    parent = target.parent
    if not parent.is_dir():
        raise TinySDError(f"{path}: folder {parent} does not exist")
    return target


def check_writable_folder(folder: Path, what: str) -> None:
    """TinySDError naming `what` unless a file can be created in `folder` (tried: root ignores permissions)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}probe.{os.getpid()}.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise TinySDError(f"{what}: cannot write in {folder} ({e.strerror or e})") from None


def write_file(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(f)` on a temporary file beside `path`'s target (`output_file`), then move it over the target."""
    target = output_file(path)
    tmp = target.parent / f"{TEMP_PREFIX}{target.name}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = None
    try:
        with open(tmp, "xb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` as UTF-8 to `path`, atomically."""
    return write_file(path, lambda f: f.write(text.encode("utf-8")))


def check_output_dir(out: str | Path, overwrite: bool, is_ours: Callable[[Path], bool], what: str) -> Path:
    """TinySDError unless a folder `what` may be written at `out` (called before any long work).

    Refused: `.`, `..`, the current folder or one holding it; an existing `out` without `overwrite`;
    with `overwrite`, an existing `out` that is a symbolic link, not a folder, or a non-empty folder
    that `is_ours` does not recognise; a parent folder that is missing or not writable.
    """
    out = Path(out)
    if out.name in ("", ".", ".."):
        raise TinySDError(f"{out}: not a folder name tinysd can write ({what}); give a new folder name")
    real = Path(os.path.realpath(out))
    cwd = Path(os.getcwd()).resolve()
    if not out.is_symlink() and (real == cwd or real in cwd.parents):
        raise TinySDError(f"{out}: is the current folder or holds it; refusing to replace it with a {what}")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise TinySDError(f"{out}: already exists (pass --overwrite to replace it)")
        if out.is_symlink() or not out.is_dir():
            raise TinySDError(f"{out}: exists and is not a folder; refusing to replace it")
        if not is_ours(out) and any(out.iterdir()):
            raise TinySDError(f"{out}: exists and is not a tinysd {what}; refusing to replace it")
    parent = out.parent
    if not parent.is_dir():
        raise TinySDError(f"{out}: the folder {parent} does not exist")
    check_writable_folder(parent, str(out))
    return out


def make_temp_dir(out: Path) -> Path:
    """A new empty folder `.tinysd-tmp-{name}.{pid}.*` beside `out` (its parent is created if needed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{out.name}.{os.getpid()}.", dir=out.parent))


def replace_dir(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished folder `tmp` to `out`, with the umask's permissions.

    An existing `out` is refused unless `overwrite` (the caller has checked that it may be
    replaced, `check_output_dir`); then it is moved aside, replaced, and deleted (or put back if
    the rename fails).
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
    old = Path(tempfile.mkdtemp(prefix=f"{OLD_PREFIX}{out.name}.{os.getpid()}.", dir=out.parent))
    try:
        os.replace(out, old / out.name)
    except BaseException:
        os.rmdir(old)
        raise
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old / out.name, out)
        os.rmdir(old)
        raise
    shutil.rmtree(old, ignore_errors=True)  # only once the new folder is in place


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False, what: str = "folder",
               is_ours: Callable[[Path], bool] = lambda p: False) -> Iterator[Path]:
    """Yield a temporary folder to fill; on normal exit it becomes `out` (see `replace_dir`).

    `out` is checked first (`check_output_dir` with `is_ours`). OSErrors become a one-line
    TinySDError naming `out` and `what` is being written.
    """
    out = check_output_dir(out, overwrite, is_ours, what)
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
