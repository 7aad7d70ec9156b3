"""Tensor files of a golden folder: `npy`, `raw` (little-endian binary) and `c` (one header per case).

* `npy`: NumPy's .npy format version 1.0, little-endian dtype, C order, no pickle.
* `raw`: the tensor's bytes, little-endian, C order in its stated layout, nothing else
  (dtype and shape are in the manifest). Extension `.bin`.
* `c`: one header per case, `{case id}.h`, holding every tensor of the case as a
  `static const` C99 array, shape and encoding macros, a tensor table and a small
  comparison harness (`tsd_check`; a `main` when compiled with `-DTSD_HARNESS_MAIN`).

Layouts. Tensors are produced in the engine's layout (NCHW activations, OIHW
conv weights). With layout "nhwc", every 4-D image tensor is written NHWC and
every 4-D conv weight OHWI (axis 1 moved last); other tensors are written as
they are ("plain": C order in the engine's axis order).
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

from ..errors import TinySDError
from ..fileio import open_regular, read_bytes

EXT = {"npy": ".npy", "raw": ".bin"}

C_TYPES = {"uint8": "uint8_t", "int8": "int8_t", "uint16": "uint16_t", "int16": "int16_t",
           "int32": "int32_t", "int64": "int64_t"}
_C_TYPE_TO_DTYPE = {v: k for k, v in C_TYPES.items()}
_C_MIN = {"int32": (-(2**31), "(-2147483647-1)"), "int64": (-(2**63), "(-9223372036854775807LL-1)")}

_TO_NHWC = (0, 2, 3, 1)


def tensor_layout(kind: str, ndim: int, layout: str) -> tuple[str, tuple[int, ...] | None]:
    """(layout label, axis permutation or None) for a tensor of `kind` ("image", "weight", "plain").

    layout "nchw": images NCHW, conv weights OIHW. "nhwc": images NHWC, weights OHWI
    (permutation (0, 2, 3, 1)). Tensors that are not 4-D are always "plain".
    """
    if ndim != 4 or kind == "plain":
        return "plain", None
    if kind not in ("image", "weight"):
        raise ValueError(f"kind: {kind!r} not in ('image', 'weight', 'plain')")
    if layout == "nchw":
        return ("NCHW" if kind == "image" else "OIHW"), None
    if layout == "nhwc":
        return ("NHWC" if kind == "image" else "OHWI"), _TO_NHWC
    raise ValueError(f"layout: {layout!r} not in ('nchw', 'nhwc')")


def to_stored(a: np.ndarray, perm) -> np.ndarray:
    """The array as stored: permuted by `perm` (or not), C-contiguous, little-endian dtype."""
    if perm is not None:
        a = a.transpose(perm)
    a = np.ascontiguousarray(a)
    return a.astype(a.dtype.newbyteorder("<"), copy=False)


def from_stored(a: np.ndarray, label: str) -> np.ndarray:
    """Inverse of `to_stored`: back to the engine's layout (NCHW / OIHW) for NHWC / OHWI tensors."""
    if label in ("NHWC", "OHWI"):
        return np.ascontiguousarray(a.transpose(0, 3, 1, 2))
    return a


# --------------------------------------------------------------------------------------------
# npy / raw
# --------------------------------------------------------------------------------------------
def npy_bytes(a: np.ndarray) -> bytes:
    """.npy version 1.0 bytes of a C-contiguous little-endian array (deterministic header)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, version=(1, 0), allow_pickle=False)
    return buf.getvalue()


def read_npy(path: Path, what: str) -> np.ndarray:
    """np.load without pickle; TinySDError naming `what` if unreadable."""
    try:
        with open_regular(path) as f:
            a = np.lib.format.read_array(f, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise TinySDError(f"{what}: unreadable .npy file {path} ({e})") from None
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return a


def read_raw(path: Path, dtype: str, shape, what: str) -> np.ndarray:
    """A raw little-endian file of exactly prod(shape) elements of `dtype`; TinySDError otherwise."""
    dt = np.dtype(dtype).newbyteorder("<")
    try:
        data = read_bytes(path)
    except OSError as e:
        raise TinySDError(f"{what}: unreadable file {path} ({e.strerror})") from None
    n = int(np.prod(shape, dtype=np.int64))
    if len(data) != n * dt.itemsize:
        raise TinySDError(
            f"{what}: {path} has {len(data)} bytes, expected {n * dt.itemsize} ({dtype} x {list(shape)})")
    return np.frombuffer(data, dt).reshape(shape).astype(np.dtype(dtype))


# --------------------------------------------------------------------------------------------
# C headers
# --------------------------------------------------------------------------------------------
def c_identifier(s: str) -> str:
    """s with every character outside [A-Za-z0-9_] replaced by '_' (and a leading digit prefixed)."""
    out = re.sub(r"[^A-Za-z0-9_]", "_", s)
    return out if out and not out[0].isdigit() else "_" + out


def _c_values(a: np.ndarray) -> str:
    dt = a.dtype.name
    vals = a.reshape(-1).tolist()
    special = _C_MIN.get(dt)
    toks = [special[1] if special and v == special[0] else str(v) for v in vals]
    lines = [", ".join(toks[i : i + 16]) for i in range(0, len(toks), 16)]
    return ",\n    ".join(lines)


def _c_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _c_comment(s: str) -> str:
    return s.replace("*/", "* /")


def _attr_defines(attrs: dict) -> list[str]:
    """#defines for scalar attributes: ints/bools as integers, lists of ints as _0, _1, ..., strings quoted."""
    out = []
    for k in sorted(attrs):
        v = attrs[k]
        m = "TSD_ATTR_" + c_identifier(k).upper()
        if isinstance(v, bool):
            out.append(f"#define {m} {int(v)}")
        elif isinstance(v, int):
            out.append(f"#define {m} {v}")
        elif isinstance(v, float):
            out.append(f"#define {m} {v!r}")
        elif isinstance(v, str):
            out.append(f"#define {m} {_c_string(v)}")
        elif isinstance(v, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            out.append(f"#define {m}_LEN {len(v)}")
            out += [f"#define {m}_{i} {x}" for i, x in enumerate(v)]
    return out


_HARNESS = r"""
/* ---- harness ------------------------------------------------------------------------- */
#ifndef TSD_TENSOR_DEFINED
#define TSD_TENSOR_DEFINED
#include <stdio.h>
typedef struct {
    const char *name;      /* tensor name in manifest.json */
    const char *role;      /* "input", "output" or "param" */
    const char *dtype;     /* "uint8", "int8", "uint16", "int16", "int32", "int64" */
    const char *layout;    /* "NCHW", "NHWC", "OIHW", "OHWI" or "plain" */
    int ndim;
    const long long *shape;
    long long size;        /* number of elements */
    int itemsize;          /* bytes per element */
    const void *data;      /* expected values, C order in `layout` */
} tsd_tensor;

/* Element i of a buffer holding t's dtype, widened to long long. */
static inline long long tsd_get(const tsd_tensor *t, const void *buf, long long i) {
    switch (t->dtype[0] == 'u' ? t->itemsize : -t->itemsize) {
    case 1: return ((const uint8_t *)buf)[i];
    case 2: return ((const uint16_t *)buf)[i];
    case -1: return ((const int8_t *)buf)[i];
    case -2: return ((const int16_t *)buf)[i];
    case -4: return ((const int32_t *)buf)[i];
    default: return (long long)((const int64_t *)buf)[i];
    }
}

/* Compare `actual` (t->size elements of t's dtype, same layout) with t's expected data.
   Returns the number of elements whose |actual - expected| exceeds `tolerance`; prints the
   first one as coordinates and the largest |difference|. */
static inline long long tsd_check(const tsd_tensor *t, const void *actual, long long tolerance) {
    long long bad = 0, first = -1, maxd = 0, i;
    for (i = 0; i < t->size; i++) {
        long long d = tsd_get(t, actual, i) - tsd_get(t, t->data, i);
        if (d < 0) d = -d;
        if (d > maxd) maxd = d;
        if (d > tolerance) { if (first < 0) first = i; bad++; }
    }
    if (bad) {
        long long rem = first; int k; long long idx[8] = {0};
        for (k = t->ndim - 1; k >= 0; k--) { idx[k] = rem % t->shape[k]; rem /= t->shape[k]; }
        printf("%s: %lld of %lld differ (max |diff| %lld); first at [", t->name, bad, t->size, maxd);
        for (k = 0; k < t->ndim; k++) printf(k ? ", %lld" : "%lld", idx[k]);
        printf("]: actual %lld, expected %lld\n", tsd_get(t, actual, first), tsd_get(t, t->data, first));
    } else {
        printf("%s: ok (%lld elements, max |diff| %lld)\n", t->name, t->size, maxd);
    }
    return bad;
}
#endif /* TSD_TENSOR_DEFINED */
"""

_HARNESS_MAIN = r"""
#ifdef TSD_HARNESS_MAIN
#include <stdlib.h>
/* Usage: ./harness OUT.bin ...  -- one raw little-endian file per output tensor, in table order.
   Exit 0 when every output matches (within TSD_TOLERANCE, default 0), 1 otherwise, 2 on bad input. */
#ifndef TSD_TOLERANCE
#define TSD_TOLERANCE 0
#endif
int main(int argc, char **argv) {
    int i, arg = 1; long long bad = 0;
    for (i = 0; i < TSD_NUM_TENSORS; i++) {
        const tsd_tensor *t = &tsd_tensors[i];
        FILE *f; void *buf; long long n;
        if (t->role[0] != 'o') continue;
        if (arg >= argc) { fprintf(stderr, "%s: no file given\n", t->name); return 2; }
        f = fopen(argv[arg], "rb");
        if (!f) { fprintf(stderr, "%s: cannot open %s\n", t->name, argv[arg]); return 2; }
        buf = malloc((size_t)(t->size * t->itemsize) + 1);
        n = (long long)fread(buf, 1, (size_t)(t->size * t->itemsize) + 1, f);
        fclose(f);
        if (n != t->size * t->itemsize) {
            fprintf(stderr, "%s: %s has %lld bytes, expected %lld\n", t->name, argv[arg], n, t->size * t->itemsize);
            return 2;
        }
        bad += tsd_check(t, buf, TSD_TOLERANCE);
        free(buf);
        arg++;
    }
    return bad ? 1 : 0;
}
#endif /* TSD_HARNESS_MAIN */
"""


def c_header(case: dict, tensors: list[tuple[dict, np.ndarray]], preamble: list[str], layout: str = "nchw") -> str:
    """The text of one case's header.

    case: the manifest case entry; tensors: (manifest tensor entry with 'symbol', stored array).
    For tensor symbol `tsd_S` it defines `tsd_S[]` (the data), `tsd_S_shape[]`, `TSD_S_NDIM`,
    `TSD_S_SIZE`, and for per-tensor encodings `TSD_S_SCALE` and `TSD_S_ZERO_POINT` (= -offset).
    Case attributes become `TSD_ATTR_*` macros; `tsd_tensors[TSD_NUM_TENSORS]` lists all tensors;
    `TSD_LAYOUT_NHWC` is 1 when 4-D images are NHWC (and conv weights OHWI), else 0.
    """
    guard = "TSD_CASE_" + c_identifier(case["id"]).upper() + "_H"
    lines = ["/*"] + [" * " + _c_comment(p) for p in preamble] + [
        f" * case {_c_comment(case['id'])} ({case['kind']}"
        + (f", op {case['op']}" if case.get("op") else "") + ")",
        " * One header per translation unit: every name below is `static` and starts with tsd_ / TSD_.",
        " */",
        f"#ifndef {guard}", f"#define {guard}", "#include <stdint.h>", "",
        f"#define TSD_CASE_ID {_c_string(case['id'])}",
        f"#define TSD_NETWORK {_c_string(case['network'])}",
        f"#define TSD_LAYOUT_NHWC {int(layout == 'nhwc')}",
    ]
    if case.get("op"):
        lines.append(f"#define TSD_OP {_c_string(case['op'])}")
    if case.get("layer"):
        lines.append(f"#define TSD_LAYER {_c_string(case['layer'])}")
    lines += _attr_defines(case.get("attrs", {}))
    for t, a in tensors:
        sym = t["symbol"]
        mac = sym.upper()
        enc = ""
        if t["scale"] is not None:
            enc = f", scale {t['scale'][0]!r}, offset {t['offset'][0]}" if len(t["scale"]) == 1 else \
                f", per-channel encoding on axis {t['axis']}"
        lines += ["", f"/* {_c_comment(t['name'])}: {t['role']}, {t['dtype']} {t['shape']} {t['layout']}{enc} */",
                  f"#define {mac}_NDIM {len(t['shape'])}",
                  f"#define {mac}_SIZE {int(np.prod(t['shape'], dtype=np.int64))}",
                  f"static const long long {sym}_shape[{max(1, len(t['shape']))}] = "
                  f"{{{', '.join(str(s) for s in t['shape']) or '1'}}};"]
        if t["scale"] is not None and len(t["scale"]) == 1:
            lines += [f"#define {mac}_SCALE {t['scale'][0]!r}", f"#define {mac}_ZERO_POINT {-t['offset'][0]}"]
        lines += [f"static const {C_TYPES[t['dtype']]} {sym}[{max(1, a.size)}] = {{",
                  "    " + (_c_values(a) if a.size else "0"), "};"]
    lines.append(_HARNESS)
    lines.append(f"#define TSD_NUM_TENSORS {len(tensors)}")
    lines.append(f"static const tsd_tensor tsd_tensors[{max(1, len(tensors))}] = {{")
    for t, a in tensors:
        s = t["symbol"]
        lines.append(f"    {{{_c_string(t['name'])}, {_c_string(t['role'])}, {_c_string(t['dtype'])}, "
                     f"{_c_string(t['layout'])}, {len(t['shape'])}, {s}_shape, {a.size}, {a.dtype.itemsize}, {s}}},")
    lines += ["};", _HARNESS_MAIN, f"#endif /* {guard} */", ""]
    return "\n".join(lines)


_ARRAY_RE = r"static const ({types}) {sym}\[(\d+)\] = \{{\n(.*?)\n\}};"


def read_c_array(text: str, symbol: str, dtype: str, shape, what: str) -> np.ndarray:
    """Parse the array `symbol` written by `c_header` back into an ndarray of dtype/shape."""
    pat = _ARRAY_RE.format(types="|".join(map(re.escape, _C_TYPE_TO_DTYPE)), sym=re.escape(symbol))
    m = re.search(pat, text, flags=re.S)
    if m is None:
        raise TinySDError(f"{what}: array {symbol} not found in its C header")
    if _C_TYPE_TO_DTYPE[m.group(1)] != dtype:
        raise TinySDError(f"{what}: C array {symbol} is {m.group(1)}, manifest says {dtype}")
    n = int(np.prod(shape, dtype=np.int64))
    body = m.group(3).replace("(-2147483647-1)", str(-(2**31))).replace("(-9223372036854775807LL-1)", str(-(2**63)))
    try:
        vals = [int(v) for v in body.replace("\n", " ").split(",")]
    except ValueError:
        raise TinySDError(f"{what}: C array {symbol} holds a value that is not an integer") from None
    if n == 0:
        vals = []
    if len(vals) != n or int(m.group(2)) != max(1, n):
        raise TinySDError(f"{what}: C array {symbol} has {len(vals)} values, expected {n}")
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
    if vals and (min(vals) < lo or max(vals) > hi):
        raise TinySDError(f"{what}: C array {symbol} has values outside {dtype}")
    return np.array(vals, dtype=dtype).reshape(shape)
