"""The integer ops of docs/arithmetic.md as calls of the HVX kernels (tinysd/hvx/*.c).

Each `*_call` function takes the arguments of its plain reference twin in
`tinysd.kernels.reference` (or `softmax_reference`, `layer_norm_reference`, ...) and returns
a `Call`: the request for the HVX program and how to decode the response into the array the
reference returns. `run_calls(proc, calls)` sends a batch to one `HvxProcess`:

    from tinysd.hvx import ops, runner
    with runner.HvxProcess() as hvx:
        [y] = ops.run_calls(hvx, [ops.linear_call(x_q, 3, w_q, None, mult, shift, 128, 0, 255)])

No arithmetic happens here: the arrays are sent as they are, with their shapes and the integer
parameters as int64 arguments (the request layout of each op is in its C file).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..fixedpoint.checks import out_dtype
from .runner import OP, STATUS, HvxError, HvxProcess, Request, Response

_CODES = {8: np.dtype("uint8"), 16: np.dtype("uint16")}


@dataclass
class Call:
    """One kernel request and the decoder of its response."""

    what: str
    request: Request
    decode: Callable[[Response], np.ndarray]


def run_calls(proc: HvxProcess, calls: Sequence[Call]) -> list[np.ndarray]:
    """Run a batch of calls in one process; HvxError naming the first call whose status is not ok."""
    responses = proc.run([c.request for c in calls])
    out = []
    for c, r in zip(calls, responses):
        if r.status != 0:
            raise HvxError(f"HVX {c.what}: {STATUS.get(r.status, f'status {r.status}')}")
        out.append(c.decode(r))
    return out


# --------------------------------------------------------------------------------------------
# argument helpers
# --------------------------------------------------------------------------------------------
def _bits(a: np.ndarray, name: str) -> int:
    for bits, dt in _CODES.items():
        if a.dtype == dt:
            return bits
    raise ValueError(f"{name}: expected uint8 or uint16 codes, got {a.dtype}")


def _scalar(v) -> int:
    return int(np.asarray(v).reshape(-1)[0])


def _per_channel(v, n: int, name: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.int64)
    if a.ndim == 0 or a.size == 1:
        a = np.full(n, int(a.reshape(-1)[0]))
    if a.shape != (n,):
        raise ValueError(f"{name}: expected {n} values, got shape {a.shape}")
    return a.astype(np.int32)


def _out_bits(bits: int, qmin: int, qmax: int) -> int:
    dt = out_dtype(qmin, qmax)
    if dt != _CODES[bits]:
        raise ValueError(f"qmin/qmax: the HVX kernels write {bits}-bit codes, [{qmin}, {qmax}] needs {dt}")
    return bits


def _decoder(shape, dtype):
    return lambda r: r.array(0, dtype, tuple(shape))


# --------------------------------------------------------------------------------------------
# §4.1-4.3: linear, conv2d, matmul
# --------------------------------------------------------------------------------------------
def linear_call(x_q, x_zp, w_q, bias_q, multiplier, shift, out_zp, qmin, qmax, acc_shift=0) -> Call:
    x_q, w_q = np.asarray(x_q), np.asarray(w_q, dtype=np.int8)
    bits = _out_bits(_bits(x_q, "x_q"), qmin, qmax)
    n_out, k = w_q.shape
    m = int(np.prod(x_q.shape[:-1], dtype=np.int64))
    bias = b"" if bias_q is None else np.asarray(bias_q, np.int32)
    req = Request(OP["linear"], [m, k, n_out, bits, x_zp, out_zp, qmin, qmax, bias_q is not None],
                  [x_q, w_q, bias, _per_channel(multiplier, n_out, "multiplier"), _per_channel(shift, n_out, "shift"),
                   _per_channel(acc_shift, n_out, "acc_shift")])
    return Call("linear", req, _decoder(x_q.shape[:-1] + (n_out,), _CODES[bits]))


def conv2d_call(x_q, x_zp, w_q, bias_q, multiplier, shift, out_zp, qmin, qmax, stride=1, padding=0,
                acc_shift=0) -> Call:
    x_q, w_q = np.asarray(x_q), np.asarray(w_q, dtype=np.int8)
    bits = _out_bits(_bits(x_q, "x_q"), qmin, qmax)
    sh, sw = (stride, stride) if np.ndim(stride) == 0 else stride
    top, bottom, left, right = (padding,) * 4 if np.ndim(padding) == 0 else padding
    n, c, h, w = x_q.shape
    n_out, _, kh, kw = w_q.shape
    ho, wo = (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1
    bias = b"" if bias_q is None else np.asarray(bias_q, np.int32)
    req = Request(OP["conv2d"], [n, c, h, w, n_out, kh, kw, sh, sw, top, bottom, left, right, bits, x_zp, out_zp,
                                 qmin, qmax, bias_q is not None],
                  [x_q, w_q, bias, _per_channel(multiplier, n_out, "multiplier"), _per_channel(shift, n_out, "shift"),
                   _per_channel(acc_shift, n_out, "acc_shift")])
    return Call("conv2d", req, _decoder((n, n_out, ho, wo), _CODES[bits]))


def matmul_call(a_q, a_zp, b_q, b_zp, multiplier, shift, out_zp, qmin, qmax, acc_shift=0) -> Call:
    a_q, b_q = np.asarray(a_q), np.asarray(b_q)
    bits = _out_bits(_bits(a_q, "a_q"), qmin, qmax)
    if _bits(b_q, "b_q") != bits:
        raise ValueError("b_q: both operands must have the same dtype")
    nd = max(a_q.ndim, b_q.ndim)
    sa = (1,) * (nd - a_q.ndim) + a_q.shape
    sb = (1,) * (nd - b_q.ndim) + b_q.shape
    batch = np.broadcast_shapes(sa[:-2], sb[:-2])
    req = Request(OP["matmul"], [nd, *sa, *sb, bits, a_zp, b_zp, _scalar(multiplier), _scalar(shift),
                                 _scalar(acc_shift), out_zp, qmin, qmax], [a_q, b_q])
    return Call("matmul", req, _decoder(batch + (sa[-2], sb[-1]), _CODES[bits]))


# --------------------------------------------------------------------------------------------
# §4.4-4.10: elementwise and data movement
# --------------------------------------------------------------------------------------------
def requantize_tensor_call(x_q, x_zp, multiplier, shift, out_zp, qmin, qmax) -> Call:
    x_q = np.asarray(x_q)
    bits = _bits(x_q, "x_q")
    out_bits = 8 if out_dtype(qmin, qmax) == np.uint8 else _out_bits(16, qmin, qmax)
    req = Request(OP["requantize_tensor"], [x_q.size, bits, x_zp, _scalar(multiplier), _scalar(shift), out_zp, qmin,
                                            qmax, out_bits], [x_q])
    return Call("requantize_tensor", req, _decoder(x_q.shape, _CODES[out_bits]))


def _two_shapes(a_q, b_q):
    nd = max(a_q.ndim, b_q.ndim)
    sa = (1,) * (nd - a_q.ndim) + a_q.shape
    sb = (1,) * (nd - b_q.ndim) + b_q.shape
    return nd, sa, sb, np.broadcast_shapes(sa, sb)


def add_call(a_q, a_zp, a_multiplier, a_shift, b_q, b_zp, b_multiplier, b_shift, multiplier, shift, out_zp, qmin,
             qmax, left_shift) -> Call:
    a_q, b_q = np.asarray(a_q), np.asarray(b_q)
    bits = _out_bits(_bits(a_q, "a_q"), qmin, qmax)
    nd, sa, sb, so = _two_shapes(a_q, b_q)
    req = Request(OP["add"], [nd, *sa, *sb, bits, a_zp, _scalar(a_multiplier), _scalar(a_shift), b_zp,
                              _scalar(b_multiplier), _scalar(b_shift), _scalar(multiplier), _scalar(shift), out_zp,
                              qmin, qmax, _scalar(left_shift)], [a_q, b_q])
    return Call("add", req, _decoder(so, _CODES[bits]))


def mul_call(a_q, a_zp, b_q, b_zp, multiplier, shift, out_zp, qmin, qmax, acc_shift=0) -> Call:
    a_q, b_q = np.asarray(a_q), np.asarray(b_q)
    bits = _out_bits(_bits(a_q, "a_q"), qmin, qmax)
    nd, sa, sb, so = _two_shapes(a_q, b_q)
    req = Request(OP["mul"], [nd, *sa, *sb, bits, a_zp, b_zp, _scalar(multiplier), _scalar(shift),
                              _scalar(acc_shift), out_zp, qmin, qmax], [a_q, b_q])
    return Call("mul", req, _decoder(so, _CODES[bits]))


def concat_call(xs, x_zps, multipliers, shifts, axis, out_zp, qmin, qmax) -> Call:
    xs = [np.asarray(x) for x in xs]
    bits = _out_bits(_bits(xs[0], "xs[0]"), qmin, qmax)
    nd = xs[0].ndim
    axis = axis % nd
    ints = [nd, axis, len(xs), bits, out_zp, qmin, qmax]
    for x, zp, m, s in zip(xs, x_zps, multipliers, shifts):
        ints += [*x.shape, zp, int(m), int(s)]
    shape = list(xs[0].shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    return Call("concat", Request(OP["concat"], ints, xs), _decoder(shape, _CODES[bits]))


def upsample_nearest2x_call(x_q, requant=None) -> Call:
    """requant: None, or (x_zp, multiplier, shift, out_zp, qmin, qmax) when the output encoding differs."""
    x_q = np.asarray(x_q)
    bits = _bits(x_q, "x_q")
    n, c, h, w = x_q.shape
    rq = [0, 0, 0, 0, 0, 0] if requant is None else [int(v) if np.ndim(v) == 0 else _scalar(v) for v in requant]
    req = Request(OP["upsample_nearest2x"], [n, c, h, w, bits, requant is not None, *rq], [x_q])
    return Call("upsample_nearest2x", req, _decoder((n, c, 2 * h, 2 * w), _CODES[bits]))


def table_call(x_q, table) -> Call:
    x_q, table = np.asarray(x_q), np.asarray(table)
    bits, out_bits = _bits(x_q, "x_q"), _bits(table, "table")
    req = Request(OP["table"], [x_q.size, bits, out_bits], [x_q, table])
    return Call("table", req, _decoder(x_q.shape, _CODES[out_bits]))


def embedding_call(ids, table_q) -> Call:
    ids, table_q = np.asarray(ids, np.int64), np.asarray(table_q)
    bits = _bits(table_q, "table_q")
    v, d = table_q.shape
    req = Request(OP["embedding"], [ids.size, v, d, bits], [ids, table_q])
    return Call("embedding", req, _decoder(ids.shape + (d,), _CODES[bits]))


# --------------------------------------------------------------------------------------------
# §6: softmax, norms
# --------------------------------------------------------------------------------------------
def softmax_call(x_q, exp_table, out_bits=None, causal=False) -> Call:
    x_q = np.asarray(x_q)
    bits = _bits(x_q, "x_q")
    out_bits = bits if out_bits is None else int(out_bits)
    t = x_q.shape[-1]
    req = Request(OP["softmax"], [x_q.size // t, t, bits, out_bits, t if causal else 0],
                  [x_q, np.asarray(exp_table, np.int32)])
    return Call("softmax", req, _decoder(x_q.shape, _CODES[out_bits]))


def _norm_blobs(params):
    return [np.asarray(params.gamma_multiplier, np.int32), np.asarray(params.gamma_shift, np.int32),
            np.asarray(params.beta_fx, np.int32)]


def group_norm_call(x_q, groups, params) -> Call:
    x_q = np.asarray(x_q)
    n, c = x_q.shape[:2]
    p = int(np.prod(x_q.shape[2:], dtype=np.int64))
    req = Request(OP["group_norm"], [n, c, p, groups, params.in_bits, params.out_bits, int(params.eps_fx)],
                  [x_q, *_norm_blobs(params)])
    return Call("group_norm", req, _decoder(x_q.shape, _CODES[params.out_bits]))


def layer_norm_call(x_q, params) -> Call:
    x_q = np.asarray(x_q)
    d = x_q.shape[-1]
    req = Request(OP["layer_norm"], [x_q.size // d, d, params.in_bits, params.out_bits, int(params.eps_fx)],
                  [x_q, *_norm_blobs(params)])
    return Call("layer_norm", req, _decoder(x_q.shape, _CODES[params.out_bits]))
