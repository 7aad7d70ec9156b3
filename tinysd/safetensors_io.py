"""A small, strict reader and writer for the safetensors format, on NumPy alone.

Why not `safetensors.numpy`: it cannot represent bfloat16, and many SD 1.x
checkpoints in the wild are stored in bf16. The format is simple enough to
read directly:

    u64 little-endian N | N bytes of UTF-8 JSON header | data buffer

The header maps each tensor name to `{"dtype": "F16", "shape": [..],
"data_offsets": [begin, end]}` (offsets relative to the data buffer) and may
hold a `"__metadata__"` object of string -> string. Every header is checked
before any tensor is read (offsets inside the file, sizes equal to
prod(shape) * itemsize), so a truncated or corrupt file fails with one
`TinySDError` naming the file. Nothing here ever unpickles anything.

Floating tensors are returned as float32: F16 and F64 by NumPy casting (F16 ->
F32 is exact; F64 -> F32 rounds to nearest), BF16 exactly, by placing its 16
bits in the high half of a float32 word.
"""
from __future__ import annotations

import json
import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .atomic import write_file
from .errors import TinySDError
from .fileio import open_regular

log = logging.getLogger(__name__)

# safetensors dtype string -> (numpy dtype stored, itemsize). BF16 is read as raw uint16.
DTYPES: dict[str, tuple[np.dtype, int]] = {
    "F64": (np.dtype("<f8"), 8),
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),
    "I64": (np.dtype("<i8"), 8),
    "I32": (np.dtype("<i4"), 4),
    "I16": (np.dtype("<i2"), 2),
    "I8": (np.dtype("i1"), 1),
    "U64": (np.dtype("<u8"), 8),
    "U32": (np.dtype("<u4"), 4),
    "U16": (np.dtype("<u2"), 2),
    "U8": (np.dtype("u1"), 1),
    "BOOL": (np.dtype("?"), 1),
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference implementation's limit


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors dtype string, e.g. "F16"
    shape: tuple[int, ...]
    begin: int  # absolute file offset of the first byte
    nbytes: int


class SafetensorsFile:
    """One safetensors file, header parsed and validated; tensors read on demand.

    `infos` maps tensor name -> TensorInfo; `metadata` is the `__metadata__`
    dict (str -> str, empty if absent). The file is opened per read, so an
    instance holds no OS handle.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.infos: dict[str, TensorInfo] = {}
        self.metadata: dict[str, str] = {}
        self._parse_header()

    def _fail(self, why: str) -> TinySDError:
        return TinySDError(f"{self.path}: not a valid safetensors file ({why})")

    def _parse_header(self) -> None:
        try:
            size = self.path.stat().st_size
            with open_regular(self.path) as f:
                head = f.read(8)
                if len(head) < 8:
                    raise self._fail(f"file is {size} bytes, too short for a header")
                (n,) = struct.unpack("<Q", head)
                if n > MAX_HEADER_BYTES or 8 + n > size:
                    raise self._fail(f"header length {n} does not fit in a {size}-byte file; truncated or not safetensors")
                raw = f.read(n)
        except OSError as e:
            raise TinySDError(f"{self.path}: cannot read ({e.strerror or e})") from None
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise self._fail(f"header is not JSON: {e}") from None
        if not isinstance(header, dict):
            raise self._fail("header is not a JSON object")
        data_start = 8 + n
        data_len = size - data_start
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict):
            raise self._fail("__metadata__ is not an object")
        self.metadata = {str(k): str(v) for k, v in meta.items()}
        end_max = 0
        for name, e in header.items():
            try:
                dtype, shape, (b, end) = e["dtype"], tuple(int(d) for d in e["shape"]), e["data_offsets"]
                b, end = int(b), int(end)
            except (KeyError, TypeError, ValueError):
                raise self._fail(f"bad header entry for tensor {name!r}") from None
            if dtype not in DTYPES:
                raise self._fail(f"tensor {name!r} has unsupported dtype {dtype!r}")
            if any(d < 0 for d in shape):
                raise self._fail(f"tensor {name!r} has a negative dimension {list(shape)}")
            nbytes = math.prod(shape) * DTYPES[dtype][1]
            if not 0 <= b <= end or end - b != nbytes:
                raise self._fail(f"tensor {name!r}: offsets [{b}, {end}] do not hold {dtype} {list(shape)}")
            if end > data_len:
                raise self._fail(f"tensor {name!r} ends at byte {data_start + end} but the file has {size} bytes; truncated")
            end_max = max(end_max, end)
            self.infos[name] = TensorInfo(dtype, shape, data_start + b, nbytes)

    def keys(self) -> list[str]:
        return list(self.infos)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: i.shape for k, i in self.infos.items()}

    def read_raw(self, names: Iterable[str], writable: bool = False) -> dict[str, np.ndarray]:
        """The named tensors as stored (BF16 as raw uint16), in file order of reads.

        Each array is a view of the bytes read for it (one copy of the file's bytes, no other): read-only,
        or, with writable=True, over a bytearray the caller may write to.
        """
        return dict(self.iter_raw(names, writable))

    def iter_raw(self, names: Iterable[str], writable: bool = False):
        """(name, array) of `read_raw`, one tensor at a time in file order (only the current one is held here)."""
        names = sorted(names, key=lambda k: self.infos[k].begin)
        try:
            with open_regular(self.path) as f:
                for name in names:
                    info = self.infos[name]
                    f.seek(info.begin)
                    if writable:
                        buf = bytearray(info.nbytes)
                        n = f.readinto(buf)
                    else:
                        buf = f.read(info.nbytes)
                        n = len(buf)
                    if n != info.nbytes:
                        raise TinySDError(f"{self.path}: tensor {name!r} is truncated")
                    yield name, np.frombuffer(buf, dtype=DTYPES[info.dtype][0]).reshape(info.shape)
        except OSError as e:
            raise TinySDError(f"{self.path}: cannot read ({e.strerror or e})") from None

    def read_float32(self, names: Iterable[str]) -> dict[str, np.ndarray]:
        """The named tensors as writable, C-contiguous float32 arrays.

        F32: the bytes read, as they are (no second copy); F16: exact cast; F64: rounded to nearest
        float32; BF16: exact (bits << 16). Tensors are read and converted one at a time, so at most one
        tensor's stored bytes are held beside the float32 arrays. Any other dtype is a TinySDError
        naming the tensor.
        """
        names = list(names)
        for name in names:
            if self.infos[name].dtype not in FLOAT_DTYPES:
                raise TinySDError(f"{self.path}: tensor {name!r} has dtype {self.infos[name].dtype}, expected a float type")
        out = {}
        for name, a in self.iter_raw(names, writable=True):
            dtype = self.infos[name].dtype
            out[name] = a if dtype == "F32" and a.dtype == np.float32 and a.dtype.isnative else to_float32(a, dtype)
        return {k: out[k] for k in names}


def to_float32(a: np.ndarray, dtype: str) -> np.ndarray:
    """Upcast one stored array (`dtype` as in safetensors) to a new float32 array."""
    if dtype == "BF16":
        return (a.astype(np.uint32) << 16).view(np.float32)  # exact: bf16 is the top half of f32
    return np.array(a, dtype=np.float32, order="C", copy=True)


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even; NaN stays NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16
    nan = np.isnan(x)
    return np.where(nan, (u >> 16) | np.uint32(0x40), rounded).astype(np.uint16)


_NP_TO_ST = {np.dtype(v[0]).str: k for k, v in DTYPES.items() if k != "BF16"}


def write_safetensors(path: str | Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None,
                      dtype: str | None = None) -> None:
    """Write `tensors` as one safetensors file, atomically (temp file in the same folder, then os.replace).

    `dtype` None keeps each array's own dtype; "F32", "F16" or "BF16" converts
    every floating array to that type (BF16 rounding to nearest even).
    """
    path = Path(path)
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        if dtype is not None and a.dtype.kind == "f":
            if dtype == "BF16":
                st, a = "BF16", bf16_bits(a)
            else:
                st, a = dtype, a.astype(DTYPES[dtype][0])
        else:
            a = a.astype(a.dtype.newbyteorder("<"))
            st = _NP_TO_ST.get(a.dtype.str)
            if st is None:
                raise ValueError(f"tensors[{name!r}]: dtype {a.dtype} has no safetensors equivalent")
        b = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": st, "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # align the data buffer to 8 bytes, as the reference writer does

    def write(f):
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)

    write_file(path, write)
