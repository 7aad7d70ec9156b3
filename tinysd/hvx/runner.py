"""Build tinysd's HVX kernels with clang and run them under qemu-hexagon.

    from tinysd.hvx import runner
    exe = runner.build()                       # compiled once, cached in the temp folder
    with runner.HvxProcess(exe) as hvx:
        [resp] = hvx.run([runner.Request(runner.OP["srdhm"], [n], [a, b])])

The C sources beside this module (`*.c`, `*.h`) form one freestanding program (no libc) for
Hexagon V66 with 128-byte HVX, the newest HVX that QEMU 7.2 models. It reads requests on
stdin and answers each on stdout; the byte format is documented in `kernels.h`. A request is
an op number, a list of int64 arguments and a list of byte blobs (arrays in C order,
little-endian); a response is a status and a list of byte blobs.

`build()` compiles with

    clang -target hexagon -mcpu=hexagonv66 -mhvx -mhvx-length=128b -O2 -ffreestanding -nostdlib
          -static -fuse-ld=lld main.c prim.c ... -o tinysd-hvx

into `$TMPDIR/tinysd-hvx-<hash>/` (the hash covers the sources, the flags and the clang
version, so a rebuild happens only when one of them changes). `HvxProcess` runs
`qemu-hexagon tinysd-hvx` and keeps it alive for many requests.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TinySDError

SOURCE_DIR = Path(__file__).resolve().parent
SOURCES = ("main.c", "rt.c", "prim.c", "gemm.c", "eltwise.c", "tables.c", "softmax.c", "norm.c")
HEADERS = ("rt.h", "prims.h", "kernels.h")
CPU = "hexagonv66"
CFLAGS = ("-target", "hexagon", f"-mcpu={CPU}", "-mhvx", "-mhvx-length=128b", "-O2", "-ffreestanding",
          "-nostdlib", "-static", "-fuse-ld=lld", "-Wall", "-Wextra", "-Werror", "-Wno-unused-function")
TOOLS = {"clang": "clang", "ld.lld": "lld", "qemu-hexagon": "qemu-user"}  # executable -> Debian package
INSTALL_HINT = "apt-get install qemu-user clang lld"

#: op numbers, as in kernels.h
OP = {
    "srdhm": 1, "rsr32": 2, "rsr64": 3, "narrow64": 4, "requantize": 5, "sat32": 6, "shl_sat": 7, "add_sat": 8,
    "linear": 20, "conv2d": 21, "matmul": 22, "requantize_tensor": 23, "add": 24, "mul": 25, "concat": 26,
    "upsample_nearest2x": 27, "table": 28, "softmax": 29, "group_norm": 30, "layer_norm": 31, "embedding": 32,
}
STATUS = {0: "ok", 1: "bad request", 2: "out of memory (arena)", 3: "unsupported parameters", 4: "unknown op"}
_MAGIC_REQUEST = 0x48445354
_MAGIC_RESPONSE = 0x52445354


class HvxError(TinySDError):
    """The HVX program could not be built or run, or answered a request with an error."""


def missing_tools() -> list[str]:
    """Executables of TOOLS not found on PATH."""
    return [t for t in TOOLS if shutil.which(t) is None]


def missing_tools_message(missing: list[str]) -> str:
    pkgs = sorted({TOOLS[t] for t in missing})
    return (f"the HVX kernels need {', '.join(missing)}: install with `{INSTALL_HINT}` "
            f"(Debian packages {', '.join(pkgs)})")


def _clang_version() -> str:
    r = subprocess.run(["clang", "--version"], capture_output=True, text=True)
    return r.stdout.splitlines()[0] if r.returncode == 0 and r.stdout else "unknown"


def source_hash() -> str:
    h = hashlib.sha256()
    for name in SOURCES + HEADERS:
        h.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes() + b"\0")
    h.update(" ".join(CFLAGS).encode() + b"\0" + _clang_version().encode())
    return h.hexdigest()[:16]


def build(cache_dir: str | os.PathLike | None = None) -> Path:
    """Compile the kernels (once per source hash) and return the executable's path.

    HvxError (one line) when a tool is missing or the compiler fails (its first error line).
    """
    missing = missing_tools()
    if missing:
        raise HvxError(missing_tools_message(missing))
    folder = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / f"tinysd-hvx-{source_hash()}"
    exe = folder / "tinysd-hvx"
    if exe.is_file():
        return exe
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tinysd-hvx.", dir=folder)
    os.close(fd)
    try:
        cmd = ["clang", *CFLAGS, *(str(SOURCE_DIR / s) for s in SOURCES), "-o", tmp]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            first = next((ln for ln in r.stderr.splitlines() if "error" in ln), r.stderr.strip()[:200])
            raise HvxError(f"clang failed building the HVX kernels: {first}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, exe)  # atomic: a concurrent build leaves one complete file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return exe


@dataclass
class Request:
    """One kernel call: op number, int64 arguments, byte blobs (NumPy arrays are sent as their C-order bytes)."""

    op: int
    ints: list[int]
    blobs: list = field(default_factory=list)

    def encode(self) -> bytes:
        blobs = [np.ascontiguousarray(b).tobytes() if isinstance(b, np.ndarray) else bytes(b) for b in self.blobs]
        parts = [struct.pack("<4I", _MAGIC_REQUEST, self.op, len(self.ints), len(blobs)),
                 np.asarray(self.ints, dtype="<i8").tobytes(), np.asarray([len(b) for b in blobs], "<u8").tobytes()]
        for b in blobs:
            parts.append(b + b"\0" * (-len(b) % 8))
        return b"".join(parts)


@dataclass
class Response:
    status: int
    blobs: list[bytes]

    def array(self, i: int, dtype, shape=None) -> np.ndarray:
        a = np.frombuffer(self.blobs[i], dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
        return a if shape is None else a.reshape(shape)


class HvxProcess:
    """A running `qemu-hexagon tinysd-hvx`: `run(requests)` sends a batch and returns the responses in order."""

    def __init__(self, exe: str | os.PathLike | None = None, qemu_args: tuple[str, ...] = ()):
        self.exe = Path(exe) if exe is not None else build()
        self.cmd = ["qemu-hexagon", *qemu_args, str(self.exe)]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "HvxProcess":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        if self.proc is None:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE)

    def close(self) -> None:
        p, self.proc = self.proc, None
        if p is not None:
            try:
                p.stdin.close()
            except OSError:
                pass
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            p.stdout.close()
            p.stderr.close()

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.proc.stdout.read(n - len(buf))
            if not chunk:
                self.proc.wait()
                err = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
                raise HvxError(f"qemu-hexagon {self.exe.name} stopped (exit status {self.proc.returncode})"
                               + (f": {err[-1]}" if err else ""))
            buf += chunk
        return bytes(buf)

    def _read_response(self) -> Response:
        magic, status, n, _ = struct.unpack("<4I", self._read(16))
        if magic != _MAGIC_RESPONSE:
            raise HvxError(f"qemu-hexagon {self.exe.name}: malformed response (magic {magic:#x})")
        sizes = np.frombuffer(self._read(8 * n), "<u8") if n else []
        blobs = []
        for s in sizes:
            s = int(s)
            blobs.append(self._read(s + (-s % 8))[:s])
        return Response(int(np.int32(np.uint32(status))), blobs)

    def run(self, requests: list[Request]) -> list[Response]:
        """Send every request (from a writer thread) while reading the responses; one response per request."""
        self.start()
        payload = [r.encode() for r in requests]
        failure: list[BaseException] = []

        def write():
            try:
                for p in payload:
                    self.proc.stdin.write(p)
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError) as e:  # the reader reports the process's exit
                failure.append(e)

        t = threading.Thread(target=write, daemon=True)
        t.start()
        try:
            return [self._read_response() for _ in requests]
        finally:
            t.join()
