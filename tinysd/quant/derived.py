"""Ranges that follow from a graph's structure, for tensors an encodings file leaves float.

An AIMET export may leave tensors unquantized that tinysd's integer network must quantize:
aimet-torch quantizes module outputs only, so the attention core (scores, softmax output,
context), functional residual adds, GEGLU's product and some SiLUs have no encoding. The
device graph keeps them float, so any range tinysd gives them must not clip what the device
would pass. Where an op's inputs have encodings (from the file, or derived here in graph
order), its output's range follows from the op and those encodings' ranges, whatever the
input data:

* silu, gelu, quick_gelu: the image of the input interval (each has one minimum, at
  `ACTIVATION_MINIMA`; decreasing before it, increasing after);
* softmax: [0, 1] (the fixed softmax encoding applies, as for any softmax a file lacks);
* matmul whose first operand is a softmax's output itself (attention context; softmax
  normalizes the last axis, which matmul contracts): each output row is a convex combination
  of the second operand's rows (probabilities >= 0 summing to one), so it lies in
  alpha * [min V, max V];
* add: [a_lo + b_lo, a_hi + b_hi]; mul: the hull of the four endpoint products; scale: the
  input interval times the factor; concat: the hull of the inputs; upsample and layout ops
  (reshape, transpose, split): the input interval.

Derived ranges are guaranteed bounds, and some are wider than the values (a sum of ranges, V's
range for a context that averages it): at 16 bits the wider grid costs nothing measurable and no
value the device passes is clipped, while at 8 bits resolution matters more than rare clipping,
so 8-bit networks do not derive them (`DERIVE_MIN_BITS`; measured on the AIMET fixture,
docs/quantization.md section 9.5: deriving at W8A8 moved tinysd-vs-QuantSim by -0.8 to 0 dB, at
W8A16 it gained 4-6 dB). A tensor left without a range whose readers' `input` parts the file
gives (their copies of it) takes those encodings' range, at any bitwidth (`reader_input_ranges`).

Not derived (calibrated as before, reported as calibrated): outputs of ops whose range depends
on data the encodings do not bound tightly (attention scores: the only structural bound,
|s| <= alpha * K * max|q| * max|k| over the contraction length K, is 10-20 times wider than the
scores on the fixture, and using it measured no gain at W8A16), and every op an input of which
is neither in the file nor derived. Only used when a file is imported:
tinysd's own calibration is unchanged.
"""
from __future__ import annotations

import logging
from typing import Callable, Mapping

import numpy as np

from ..interp.parts import SQRT2, const_name, part_tensor
from .encodings import Encoding
from .observers import encoding_from_range

log = logging.getLogger(__name__)

#: networks with fewer activation bits keep calibrated ranges for the tensors a file lacks (module docstring)
DERIVE_MIN_BITS = 16

#: kind -> (x at the function's one minimum, the minimum), float64. SiLU: x* solves
#: 1 + x (1 - sigmoid(x)) = 0 (Newton's method, float64); quick_gelu(x) = silu(1.702 x) / 1.702;
#: exact GELU: x* solves Phi(x) + x phi(x) = 0. (Checked by tests/quant/test_derived.py.)
_SILU_X, _SILU_MIN = -1.2784645427610737, -0.2784645427610738
ACTIVATION_MINIMA = {
    "silu": (_SILU_X, _SILU_MIN),
    "quick_gelu": (_SILU_X / 1.702, _SILU_MIN / 1.702),
    "gelu": (-0.7517915246935645, -0.16997120747990369),
}


def _activation(kind: str) -> Callable[[float], float]:
    from math import erf, exp, sqrt

    if kind == "silu":
        return lambda x: x / (1.0 + exp(-x)) if x > -700 else 0.0
    if kind == "quick_gelu":
        return lambda x: x / (1.0 + exp(-1.702 * x)) if x > -400 else 0.0
    return lambda x: 0.5 * x * (1.0 + erf(x / sqrt(2.0)))


def activation_range(kind: str, lo: float, hi: float) -> tuple[float, float]:
    """The image of [lo, hi] under silu, gelu or quick_gelu (float64)."""
    f = _activation(kind)
    x_min, f_min = ACTIVATION_MINIMA[kind]
    ends = (f(lo), f(hi))
    return (f_min if lo <= x_min <= hi else min(ends)), max(ends)


def _hull_mul(a, b) -> tuple[float, float]:
    p = (a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1])
    return min(p), max(p)


def _times(r, c: float) -> tuple[float, float]:
    return min(r[0] * c, r[1] * c), max(r[0] * c, r[1] * c)


def _monotone(f, r) -> tuple[float, float]:
    return f(r[0]), f(r[1])


def _sigmoid(x: float) -> float:
    from math import exp

    return 1.0 / (1.0 + exp(-x)) if x > -700 else 0.0


def _erf(x: float) -> float:
    from math import erf

    return erf(x)


#: op kind -> its parts (tinysd.interp.parts.PARTS; "" is the op's last step) with the range of each from
#: (the op's input range x, the ranges so far {part: range}, const(part, c): the step's constant as used)
PART_RULES = {
    "silu": (("sigmoid", lambda x, r, c: _monotone(_sigmoid, x)),
             ("", lambda x, r, c: _hull_mul(x, r["sigmoid"]))),
    "quick_gelu": (("scaled", lambda x, r, c: _times(x, c("scaled", 1.702))),
                   ("sigmoid", lambda x, r, c: _monotone(_sigmoid, r["scaled"])),
                   ("", lambda x, r, c: _hull_mul(x, r["sigmoid"]))),
    "gelu": (("div", lambda x, r, c: _times(x, 1.0 / c("div", SQRT2))),
             ("erf", lambda x, r, c: _monotone(_erf, r["div"])),
             ("add", lambda x, r, c: (r["erf"][0] + c("add", 1.0), r["erf"][1] + c("add", 1.0))),
             ("mul", lambda x, r, c: _hull_mul(x, r["add"])),
             ("", lambda x, r, c: _times(r["mul"], c("", 0.5)))),
}


def _part_ranges(op, x, parts, known, missing, const) -> dict[str, tuple]:
    """{tensor: range} of an op computed as its parts (`PART_RULES`): each part's and the output's, known
    (the file's) or derived, until one is neither."""
    if op.kind not in PART_RULES or tuple(parts) != tuple(p for p, _ in PART_RULES[op.kind][:-1]):
        return {}
    got, out = {}, {}
    for part, rule in PART_RULES[op.kind]:
        t = part_tensor(op.tensor, part) if part else op.tensor
        if t in known:
            got[part] = known[t]
        elif t in missing:
            got[part] = out[t] = rule(x, got, lambda p, c: const(const_name(op.tensor, p), c))
        else:
            break
    return out


def derived_ranges(trace, known: Mapping[str, tuple[float, float]], missing, parts: Mapping[str, tuple] | None = None,
                   consts: Mapping[str, Encoding] | None = None) -> dict[str, tuple[tuple[float, float], str]]:
    """{tensor: ((lo, hi), why)} for each tensor of `missing` whose range follows from its op (module docstring).

    trace: `tinysd.interp.trace.trace_network` of the network; known: {tensor: (lo, hi)} of the
    tensors with an encoding (the file's grid ranges, softmax outputs [0, 1]); missing: the
    tensors without one. Ops are visited in execution order, so a derived range feeds later ops.
    parts: {op name: parts} of ops computed as their parts (silu, quick_gelu, gelu: each part's
    range from the previous ones, `PART_RULES`, with a step's constant quantize-dequantized by its
    encoding in `consts` when it has one, as the prepared network uses it).
    """
    missing, parts, consts = set(missing), parts or {}, consts or {}

    def const(name: str, c: float) -> float:
        enc = consts.get(name)
        return float(c) if enc is None else float(enc.dequantize(enc.quantize(np.float64(c))))

    rng: dict[int, tuple[float, float]] = {}  # traced tensor id -> range
    softmax_ids: set[int] = set()
    out: dict[str, tuple[tuple[float, float], str]] = {}
    for op in trace.ops:
        ins = [rng.get(i) for i in op.inputs]
        if op.kind == "layout":  # the same values: the same range
            if ins[0] is not None:
                for o in op.output:
                    rng[o] = ins[0]
            continue
        if op.tensor is None:
            continue
        if op.name in parts and ins and ins[0] is not None:
            got = _part_ranges(op, ins[0], parts[op.name], known, missing, const)
            why = f"{op.kind} parts from its input's range"
            out.update({t: (r, why) for t, r in got.items()})
            r = known.get(op.tensor) or (got[op.tensor] if op.tensor in got else None)
        elif op.name in parts:
            r = known.get(op.tensor)
        elif op.tensor in known:
            r = known[op.tensor]
        elif op.tensor in missing and all(r is not None for r in ins):
            r, why = _rule(op, ins, softmax_ids)
            if r is not None:
                out[op.tensor] = (r, why)
        else:
            r = None
        if op.kind == "softmax":
            softmax_ids.add(op.output[0])
        if r is not None:
            rng[op.output[0]] = (float(r[0]), float(r[1]))
    return out


def _rule(op, ins, softmax_ids) -> tuple[tuple[float, float] | None, str]:
    k = op.kind
    if k in ACTIVATION_MINIMA:
        return activation_range(k, *ins[0]), f"{k} of its input's range"
    if k in ("upsample_nearest2x",):
        return ins[0], "its input's range"
    if k == "scale":
        f = op.attrs["factor"]
        lo, hi = ins[0][0] * f, ins[0][1] * f
        return (min(lo, hi), max(lo, hi)), "its input's range times the factor"
    if k == "add":
        (alo, ahi), (blo, bhi) = ins
        return (alo + blo, ahi + bhi), "the sum of its inputs' ranges"
    if k == "mul":
        (alo, ahi), (blo, bhi) = ins
        p = (alo * blo, alo * bhi, ahi * blo, ahi * bhi)
        return (min(p), max(p)), "the product of its inputs' ranges"
    if k == "concat":
        return (min(r[0] for r in ins), max(r[1] for r in ins)), "the hull of its inputs' ranges"
    if k == "matmul" and op.inputs[0] in softmax_ids:
        a = op.attrs.get("alpha", 1.0)
        lo, hi = ins[1][0] * a, ins[1][1] * a
        return (min(lo, hi), max(lo, hi)), "a convex combination of its second operand's rows"
    return None, ""


def derive_encodings(trace, encodings: Mapping[str, Encoding], missing, bits: int, softmax_outputs=(),
                     parts: Mapping[str, tuple] | None = None) -> dict[str, tuple[Encoding, str]]:
    """{tensor: (Encoding, why)}: `derived_ranges` of `missing` as `bits`-bit encodings (`encoding_from_range`).

    encodings: the network's encodings from the file (constants `*.const` included); softmax_outputs:
    softmax output tensors (at the fixed softmax encoding, range [0, 1]); parts: {op: parts}."""
    known = {n: (float(e.min[0]), float(e.max[0])) for n, e in encodings.items()
             if not e.per_channel and not n.endswith(".const")}
    known.update({n: (0.0, 1.0) for n in softmax_outputs if n not in known})
    consts = {n: e for n, e in encodings.items() if n.endswith(".const")}
    return {n: (encoding_from_range(lo, hi, bits), why)
            for n, ((lo, hi), why) in derived_ranges(trace, known, missing, parts, consts).items()}


def reader_input_ranges(trace, encodings: Mapping[str, Encoding]) -> dict[str, tuple[float, float]]:
    """{tensor: (lo, hi)}: the ranges the file gives a tensor through its readers' `input` parts.

    A reader copy's encoding (`{op}.input.out`, tinysd.quant.onnx_map) is AIMET's range of the value
    the op reads, from AIMET's calibration data, though the device quantizes only that reader's copy
    with it. Several readers: the hull of their ranges."""
    producer = {}
    for op in trace.ops:
        for o in op.output:
            producer[o] = op
    out: dict[str, tuple[float, float]] = {}
    for op in trace.ops:
        enc = encodings.get(part_tensor(op.tensor, "input")) if op.tensor else None
        if enc is None or not op.inputs:
            continue
        src = producer.get(op.inputs[0])
        while src is not None and src.kind == "layout":
            src = producer.get(src.inputs[0])
        if src is None or not src.tensor:
            continue
        lo, hi = float(enc.min[0]), float(enc.max[0])
        old = out.get(src.tensor)
        out[src.tensor] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
    return out


def derive_missing(acts: dict, report, traces: Mapping, bits: Mapping[str, int],
                   parts: Mapping[str, Mapping[str, tuple]] | None = None) -> None:
    """Replace, in place, the calibrated encodings of tensors whose range follows from the file's encodings.

    acts, report: `tinysd.quant.imports.merge`'s output (report.calibrated lists the tensors the
    files lack); traces: {network: trace} of the networks with a file; bits: {network: activation
    bitwidth}; parts: {network: {op: parts}} of ops computed as their parts. In order: at
    DERIVE_MIN_BITS and more, the structural ranges (`derive_encodings`); then, for a tensor still
    without one, the range its readers' input encodings in the file give it (`reader_input_ranges`:
    AIMET's own range of that value, in place of tinysd's calibration; at 8 bits it also makes the
    reader's `input` step an identity instead of a second rounding). The tensors so given move from
    report.calibrated[net] to report.derived[net] ({tensor: why}); acts[net] gets their encodings.
    """
    for net, trace in traces.items():
        cal = report.calibrated.get(net, [])
        file_encs = {n: e for n, e in acts[net].items() if n not in cal}
        got = {}
        if bits[net] >= DERIVE_MIN_BITS:
            got = derive_encodings(trace, file_encs, cal, bits[net], report.fixed_softmax.get(net, ()),
                                   (parts or {}).get(net))
        readers = reader_input_ranges(trace, file_encs)
        for n in cal:
            if n not in got and n in readers:
                got[n] = (encoding_from_range(*readers[n], bits[net]), "its readers' input encoding in the file")
        for n, (enc, _) in got.items():
            acts[net][n] = enc
        report.calibrated[net] = [n for n in cal if n not in got]
        report.derived[net] = {n: why for n, (_, why) in got.items()}
        if got:
            log.info("%s: derived from the file's encodings (graph structure): %s", net,
                     ", ".join(f"{n} ({why})" for n, (_, why) in got.items()))


__all__ = ["DERIVE_MIN_BITS", "ACTIVATION_MINIMA", "activation_range", "derived_ranges", "derive_encodings",
           "reader_input_ranges", "derive_missing"]
